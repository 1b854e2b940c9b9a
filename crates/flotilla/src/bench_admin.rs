//! The admin API client of `flotilla bench coordinator`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::CoordinatorArgs;

/// The admin API, just enough to submit, inspect and cancel the benchmark's jobs.
pub(super) struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    pub(super) fn new(a: &CoordinatorArgs) -> Result<Self> {
        let base = a.admin_url.trim_end_matches('/').to_owned();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if base.starts_with("https://") {
            let path = a
                .ca_cert
                .as_ref()
                .ok_or_else(|| anyhow!("--ca-cert is required for an https:// admin URL"))?;
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-cert {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca-cert {} is not PEM", path.display()))?;
            builder = builder.tls_certs_only([cert]);
        } else if !(base.starts_with("http://") && a.insecure) {
            bail!("--admin-url must start with https:// (or http:// with --insecure), got {base}");
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self {
            base,
            token: a.admin_token.clone(),
            http,
        })
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        toml: Option<String>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(t) = toml {
            req = req.header("content-type", "application/toml").body(t);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{url}: {status}: {}", text.trim());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{url} answered with invalid JSON"))
    }

    pub(super) async fn submit(&self, spec: &str) -> Result<String> {
        let v = self
            .call(reqwest::Method::POST, "/v1/jobs", Some(spec.to_owned()))
            .await?;
        match &v["job_id"] {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => bail!("the coordinator's answer to a job submission has no job_id: {v}"),
        }
    }
}
