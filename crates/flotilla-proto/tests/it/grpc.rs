//! The generated tonic stubs work end to end: an in-process server on 127.0.0.1:0 and a client,
//! exercising a server stream (DownloadModel, with resume) and a client stream (UploadUpdate, with the
//! `authorization` header) through the transfer helpers.

use crate::common;

use std::pin::Pin;
use std::sync::Mutex;

use flotilla_proto::v1;
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use flotilla_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use flotilla_proto::{
    ModelReceiver, UploadAssembler, UploadLimits, model_chunks, model_info, upload_messages,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const N: usize = 5000;

#[derive(Default)]
struct Fake {
    received: Mutex<Option<(v1::UpdateHeader, Vec<f32>)>>,
}

#[tonic::async_trait]
impl Coordinator for Fake {
    async fn enroll(
        &self,
        _: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        Err(Status::unimplemented("enroll"))
    }

    async fn check_in(
        &self,
        _: Request<v1::CheckInRequest>,
    ) -> Result<Response<v1::CheckInResponse>, Status> {
        Err(Status::unimplemented("check_in"))
    }

    type DownloadModelStream = Pin<Box<dyn Stream<Item = Result<v1::ModelChunk, Status>> + Send>>;

    async fn download_model(
        &self,
        req: Request<v1::DownloadRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let r = req.into_inner();
        let chunks: Vec<_> = model_chunks(&common::params(N), 4096, r.offset)
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn upload_update(
        &self,
        req: Request<Streaming<v1::UploadMessage>>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        match req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            Some("Bearer cred-1") => {}
            _ => return Err(Status::unauthenticated("missing or bad credential")),
        }
        let mut stream = req.into_inner();
        let Some(v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Header(header)),
        }) = stream.message().await?
        else {
            return Err(Status::invalid_argument("first message must be the header"));
        };
        let mut a = UploadAssembler::new(header, &common::expected(N), &UploadLimits::default())?;
        let mut values = Vec::new();
        while let Some(msg) = stream.message().await? {
            let Some(v1::upload_message::Kind::Chunk(c)) = msg.kind else {
                return Err(Status::invalid_argument("header repeated"));
            };
            a.push(&c)?;
            a.drain_f32(&mut |vs| values.extend_from_slice(vs))?;
        }
        if !a.is_complete() {
            return Ok(Response::new(v1::UploadResponse {
                status: v1::UploadStatus::Incomplete as i32,
                message: String::new(),
                resume_offset: a.received(),
                ..Default::default()
            }));
        }
        let header = a.header().clone();
        let total = a.total_bytes();
        values.extend(a.finish()?);
        *self.received.lock().unwrap() = Some((header, values));
        Ok(Response::new(v1::UploadResponse {
            status: v1::UploadStatus::Accepted as i32,
            message: "ok".into(),
            resume_offset: total,
            ..Default::default()
        }))
    }

    async fn query_upload(
        &self,
        _: Request<v1::QueryUploadRequest>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        Err(Status::not_found("no such upload"))
    }

    async fn submit_stage_message(
        &self,
        _: Request<v1::StageMessageRequest>,
    ) -> Result<Response<v1::StageMessageResponse>, Status> {
        Err(Status::failed_precondition(
            "this fake runs no secure aggregation",
        ))
    }

    async fn report_task_failure(
        &self,
        _: Request<v1::TaskFailure>,
    ) -> Result<Response<v1::TaskFailureAck>, Status> {
        Err(Status::unimplemented("report_task_failure"))
    }

    async fn resolve_model(
        &self,
        _: Request<v1::ResolveModelRequest>,
    ) -> Result<Response<v1::ResolvedModel>, Status> {
        Err(Status::unimplemented("resolve_model"))
    }

    async fn submit_evaluation(
        &self,
        _: Request<v1::EvaluationReport>,
    ) -> Result<Response<v1::EvaluationAck>, Status> {
        Err(Status::unimplemented("submit_evaluation"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stubs_work_in_process() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::sync::Arc::new(Fake::default());
    let server = tonic::transport::Server::builder()
        .add_service(CoordinatorServer::from_arc(fake.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);

    let mut client = CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // Unimplemented RPCs come back as gRPC statuses.
    let e = client
        .query_upload(v1::QueryUploadRequest {
            upload_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Download, "break" after two chunks, resume from the receiver's offset.
    let p = common::params(N);
    let mut r = ModelReceiver::new(&model_info(&common::layout(N), &p), 1 << 20).unwrap();
    let req = v1::DownloadRequest {
        job_id: "job-1".into(),
        model_version: 2,
        offset: 0,
        ..Default::default()
    };
    let mut s = client
        .download_model(req.clone())
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        r.push(&s.next().await.unwrap().unwrap()).unwrap();
    }
    drop(s);
    assert_eq!(r.received(), 8192);
    let mut s = client
        .download_model(v1::DownloadRequest {
            offset: r.received(),
            ..req
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(c) = s.next().await {
        r.push(&c.unwrap()).unwrap();
    }
    assert_eq!(common::bits(&r.finish().unwrap()), common::bits(&p));

    // Upload without, then with, a credential.
    let header = common::header_for(&p);
    let msgs: Vec<_> = upload_messages(header.clone(), &p, 3000, 0).collect();
    let e = client
        .upload_update(tokio_stream::iter(msgs.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut req = Request::new(tokio_stream::iter(msgs));
    req.metadata_mut()
        .insert("authorization", "Bearer cred-1".parse().unwrap());
    let resp = client.upload_update(req).await.unwrap().into_inner();
    assert_eq!(resp.status, v1::UploadStatus::Accepted as i32);
    assert_eq!(resp.resume_offset, 4 * N as u64);
    let (h, got) = fake.received.lock().unwrap().take().unwrap();
    assert_eq!(h, header);
    assert_eq!(common::bits(&got), common::bits(&p));

    // A corrupted upload maps to DATA_LOSS through `From<TransferError> for Status`.
    let mut bad = header.clone();
    bad.sha256 = vec![0; 32];
    let mut req = Request::new(tokio_stream::iter(
        upload_messages(bad, &p, 3000, 0).collect::<Vec<_>>(),
    ));
    req.metadata_mut()
        .insert("authorization", "Bearer cred-1".parse().unwrap());
    assert_eq!(
        client.upload_update(req).await.unwrap_err().code(),
        tonic::Code::DataLoss
    );

    server.abort();
}
