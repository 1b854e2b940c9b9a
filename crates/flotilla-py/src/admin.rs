//! `flotilla.Admin`: the coordinator's admin HTTP API from Python (reqwest, rustls with the CA the
//! user names; the GIL is released during every request). Answers are the API's JSON as Python
//! dicts and lists (`docs/reference/admin-api.md`), models as `{name: numpy.ndarray}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_core::{ParamLayout, TensorSpec};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use reqwest::Method;
use reqwest::blocking::{Client as Http, RequestBuilder, multipart};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::errors::FlotillaError;

/// Largest model `download_model` accepts (the coordinator's own ceiling is far below).
const MAX_DOWNLOAD_BYTES: u64 = 8 << 30;

/// A connection to a coordinator's admin API.
#[pyclass(module = "flotilla._native", frozen)]
pub(crate) struct Admin {
    base: String,
    token: String,
    http: Http,
}

/// A request body.
enum Body {
    Json(Value),
    Toml(String),
    Multipart { spec: String, initial: Vec<u8> },
}

#[pymethods]
impl Admin {
    /// The admin API at `url` (`https://host:port`, verified against `ca_cert`; `http://` only with
    /// `insecure=True`), authenticated with `token` (default: `$FLOTILLA_ADMIN_TOKEN`).
    #[new]
    #[pyo3(signature = (url, *, ca_cert=None, token=None, insecure=false, timeout=30.0))]
    fn new(
        url: String,
        ca_cert: Option<PathBuf>,
        token: Option<String>,
        insecure: bool,
        timeout: f64,
    ) -> PyResult<Self> {
        let token = match token.or_else(|| std::env::var("FLOTILLA_ADMIN_TOKEN").ok()) {
            Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                return Err(PyValueError::new_err(
                    "no admin token: pass token=… or set FLOTILLA_ADMIN_TOKEN to the coordinator's admin token",
                ));
            }
        };
        if !(timeout.is_finite() && timeout > 0.0 && timeout <= 86_400.0) {
            return Err(PyValueError::new_err(format!(
                "timeout must be in (0, 86400] seconds, got {timeout}"
            )));
        }
        let base = url.trim().trim_end_matches('/').to_owned();
        // reqwest is built without a default crypto provider; ring, as in the rest of the stack.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = Http::builder().timeout(Duration::from_secs_f64(timeout));
        if base.starts_with("http://") {
            if !insecure {
                return Err(PyValueError::new_err(format!(
                    "{base} is plain text; use https:// with ca_cert=…, or pass insecure=True (development only)"
                )));
            }
        } else if base.starts_with("https://") {
            let path = ca_cert.ok_or_else(|| {
                PyValueError::new_err(format!("ca_cert=… is required for {base}"))
            })?;
            let pem = std::fs::read(&path).map_err(|e| {
                PyValueError::new_err(format!("reading ca_cert {}: {e}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|_| {
                PyValueError::new_err(format!(
                    "ca_cert {} is not a PEM certificate",
                    path.display()
                ))
            })?;
            builder = builder.tls_certs_only([cert]);
        } else {
            return Err(PyValueError::new_err(format!(
                "the admin URL must start with https:// (or http:// with insecure=True), got {base:?}"
            )));
        }
        let http = builder
            .build()
            .map_err(|e| FlotillaError::new_err(format!("building the HTTP client: {e}")))?;
        Ok(Self { base, token, http })
    }

    /// Submits a job and returns its id. `spec` is the job's TOML text, or a path (`pathlib.Path`
    /// or `os.PathLike`) to a job or scenario file. A spec with `[model] initial = "…"` sends that
    /// safetensors file along, resolved relative to the spec file (or the working directory for
    /// text), unless `initial` gives the file's bytes or path.
    #[pyo3(signature = (spec, *, initial=None))]
    fn submit_job(
        &self,
        py: Python<'_>,
        spec: &Bound<'_, PyAny>,
        initial: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let (text, dir) = if spec.is_instance_of::<pyo3::types::PyString>() {
            (spec.extract::<String>()?, PathBuf::from("."))
        } else {
            let path: PathBuf = spec.extract().map_err(|_| {
                PyTypeError::new_err("spec must be the job's TOML text (str) or a path to it")
            })?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| PyValueError::new_err(format!("reading {}: {e}", path.display())))?;
            let dir = path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (text, dir)
        };
        let text = job_part(&text)?;
        let named = initial_name(&text)?;
        let initial: Option<Vec<u8>> = match (initial, named) {
            (Some(v), _) => Some(match v.cast::<PyBytes>() {
                Ok(b) => b.as_bytes().to_vec(),
                Err(_) => {
                    let p: PathBuf = v.extract().map_err(|_| {
                        PyTypeError::new_err(
                            "initial must be bytes or a path to a safetensors file",
                        )
                    })?;
                    read_initial(&p)?
                }
            }),
            (None, Some(name)) => Some(read_initial(&dir.join(name))?),
            (None, None) => None,
        };
        let body = match initial {
            Some(initial) => Body::Multipart {
                spec: text,
                initial,
            },
            None => Body::Toml(text),
        };
        let v = py.detach(|| self.call(Method::POST, "/v1/jobs", Some(body)))?;
        v.get("job_id").and_then(Value::as_u64).ok_or_else(|| {
            FlotillaError::new_err(format!("the coordinator answered {v} without a job_id"))
        })
    }

    /// The job's status: `GET /v1/jobs/{id}` as a dict (state, rounds, per-round `history` with
    /// metrics).
    fn job_status(&self, py: Python<'_>, job_id: u64) -> PyResult<Py<PyAny>> {
        let v = py.detach(|| self.call(Method::GET, &format!("/v1/jobs/{job_id}"), None))?;
        to_py(py, &v)
    }

    /// Every job, newest first, as a list of dicts (`GET /v1/jobs`).
    fn jobs(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let v = py.detach(|| self.call(Method::GET, "/v1/jobs", None))?;
        let list = v.get("jobs").cloned().unwrap_or(v);
        to_py(py, &list)
    }

    /// Cancels a job; returns its summary.
    fn cancel_job(&self, py: Python<'_>, job_id: u64) -> PyResult<Py<PyAny>> {
        let v =
            py.detach(|| self.call(Method::POST, &format!("/v1/jobs/{job_id}/cancel"), None))?;
        to_py(py, &v)
    }

    /// Issues an enrollment token for `uses` clients of `tenant`; returns the secret.
    #[pyo3(signature = (*, tenant=None, uses=1, expires_in_seconds=None))]
    fn create_token(
        &self,
        py: Python<'_>,
        tenant: Option<String>,
        uses: u32,
        expires_in_seconds: Option<u64>,
    ) -> PyResult<String> {
        let mut req = serde_json::Map::new();
        if let Some(t) = tenant {
            req.insert("tenant".into(), t.into());
        }
        req.insert("uses".into(), uses.into());
        if let Some(s) = expires_in_seconds {
            req.insert("expires_in_seconds".into(), s.into());
        }
        let body = Body::Json(Value::Object(req));
        let v = py.detach(|| self.call(Method::POST, "/v1/enrollment-tokens", Some(body)))?;
        v.get("token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| FlotillaError::new_err("the coordinator issued no token"))
    }

    /// A committed model (the latest, or `round`'s) as `{name: numpy.ndarray}` in layout order,
    /// checked against the round's SHA-256.
    #[pyo3(signature = (job_id, *, round=None))]
    fn download_model(
        &self,
        py: Python<'_>,
        job_id: u64,
        round: Option<u64>,
    ) -> PyResult<Py<PyDict>> {
        let (layout, values) = py.detach(|| self.download(job_id, round))?;
        Ok(crate::arrays::to_python(py, &layout, values)?.unbind())
    }
}

impl Admin {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request and returns its JSON answer; an error answer becomes a `FlotillaError`
    /// with the coordinator's one-line message.
    fn call(&self, method: Method, path: &str, body: Option<Body>) -> PyResult<Value> {
        let req = self.request(method, path);
        let req = match body {
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Toml(t)) => req.header("content-type", "application/toml").body(t),
            Some(Body::Multipart { spec, initial }) => {
                req.multipart(multipart::Form::new().text("spec", spec).part(
                    "initial",
                    multipart::Part::bytes(initial).file_name("initial.safetensors"),
                ))
            }
            None => req,
        };
        let resp = req.send().map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let text = resp
            .text()
            .map_err(|e| FlotillaError::new_err(format!("reading the answer of {path}: {e}")))?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            return Err(FlotillaError::new_err(format!("{status}: {}", msg.trim())));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| FlotillaError::new_err(format!("{path} answered with invalid JSON: {e}")))
    }

    fn transport(&self, e: &reqwest::Error) -> PyErr {
        let hint = flotilla_client::diagnose_tls(e, None, &self.base);
        FlotillaError::new_err(match hint {
            Some(h) => h,
            None => format!("calling {}: {}", self.base, flotilla_client::error_chain(e)),
        })
    }

    fn download(&self, job_id: u64, round: Option<u64>) -> PyResult<(ParamLayout, Vec<f32>)> {
        let query = round.map(|r| format!("?round={r}")).unwrap_or_default();
        let info = self.call(
            Method::GET,
            &format!("/v1/jobs/{job_id}/model/info{query}"),
            None,
        )?;
        let bad = |what: &str| {
            FlotillaError::new_err(format!("the model description has no valid {what}"))
        };
        let round = info
            .get("round")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("round"))?;
        let sha = info
            .get("model_sha256")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("model_sha256"))?;
        let size = info
            .get("size_bytes")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("size_bytes"))?;
        if size > MAX_DOWNLOAD_BYTES {
            return Err(FlotillaError::new_err(format!(
                "the model has {size} bytes; refusing more than {MAX_DOWNLOAD_BYTES}"
            )));
        }
        let tensors = info
            .get("tensors")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("tensors"))?;
        let mut specs = Vec::with_capacity(tensors.len());
        for t in tensors {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tensor name"))?;
            let shape: Option<Vec<usize>> = t.get("shape").and_then(Value::as_array).map(|s| {
                s.iter()
                    .filter_map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            });
            specs.push(TensorSpec::new(
                name,
                shape.ok_or_else(|| bad("tensor shape"))?,
            ));
        }
        let layout = ParamLayout::new(specs);
        // The round is pinned: "latest" must not move between the description and the bytes.
        let resp = self
            .request(
                Method::GET,
                &format!("/v1/jobs/{job_id}/model?round={round}"),
            )
            .send()
            .map_err(|e| self.transport(&e))?;
        if !resp.status().is_success() {
            return Err(FlotillaError::new_err(format!(
                "{}: downloading round {round}'s model",
                resp.status()
            )));
        }
        let bytes = resp.bytes().map_err(|e| {
            FlotillaError::new_err(format!("downloading round {round}'s model: {e}"))
        })?;
        let got = hex::encode(Sha256::digest(&bytes));
        if !got.eq_ignore_ascii_case(sha) {
            return Err(FlotillaError::new_err(format!(
                "the downloaded model's SHA-256 is {got} but round {round} committed {sha}; retry"
            )));
        }
        let values = flotilla_core::params_from_le_bytes(&bytes)
            .filter(|v| v.len() == layout.len())
            .ok_or_else(|| {
                FlotillaError::new_err(format!(
                    "the model is {} bytes but its layout describes {} values",
                    bytes.len(),
                    layout.len()
                ))
            })?;
        Ok((layout, values))
    }
}

/// The job part of a job or scenario file (simulation-only keys removed, as `flotilla job submit`
/// does).
fn job_part(text: &str) -> PyResult<String> {
    let is_scenario = flotilla_spec::read(text)
        .is_ok_and(|d| !flotilla_spec::moved::simulation_keys(&d).is_empty());
    if !is_scenario {
        return Ok(text.to_owned());
    }
    flotilla_spec::strip_simulation_only(text)
        .map(|(t, _)| t)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `[model] initial`, if the spec names one.
fn initial_name(text: &str) -> PyResult<Option<String>> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| PyValueError::new_err(format!("spec: {}", e.message())))?;
    match doc.get("model").and_then(|m| m.get("initial")) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(PyValueError::new_err(
            "model.initial: must be a file name (a string)",
        )),
    }
}

fn read_initial(path: &Path) -> PyResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        PyValueError::new_err(format!(
            "model.initial: cannot read {}: {e} (the path is relative to the job file)",
            path.display()
        ))
    })
}

/// A JSON value as the equal Python object (dict, list, str, int, float, bool, None).
fn to_py(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    let json = py.import("json")?;
    Ok(json.call_method1("loads", (v.to_string(),))?.unbind())
}
