//! Opening the store: URLs and configuration (backend-independent).

use flotilla_store::{Backend, Store, StoreConfig, StoreError};

#[test]
fn backends_are_chosen_by_url() {
    assert_eq!(
        Backend::from_url("sqlite://x/flotilla.db?mode=rwc").unwrap(),
        Backend::Sqlite
    );
    assert_eq!(
        Backend::from_url("postgres://u@h/db").unwrap(),
        Backend::Postgres
    );
    assert_eq!(
        Backend::from_url("postgresql://u@h/db").unwrap(),
        Backend::Postgres
    );
    assert!(matches!(
        Backend::from_url("mysql://h/db"),
        Err(StoreError::UnsupportedDatabaseUrl(_))
    ));
}

#[test]
fn in_dir_puts_everything_in_the_data_dir() {
    let config = StoreConfig::in_dir("/data/flotilla");
    assert_eq!(
        config.database_url,
        "sqlite:///data/flotilla/flotilla.db?mode=rwc"
    );
    assert_eq!(config.blob_url, "/data/flotilla/models");
}

#[tokio::test]
async fn open_in_dir_creates_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a/b");
    let store = Store::open_in_dir(&data).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(data.join("flotilla.db").is_file());
    assert!(data.join("models").is_dir());
}

#[tokio::test]
async fn file_urls_work_for_blobs_and_unknown_schemes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/f.db?mode=rwc", dir.path().display());
    let url = format!("file://{}/blobs", dir.path().display());
    let store = Store::open(&StoreConfig::new(db.clone(), url))
        .await
        .unwrap();
    let job = store
        .create_job("t", "j", &serde_json::json!({}), 1)
        .await
        .unwrap();
    let key = store.put_model(job, 0, b"m".to_vec()).await.unwrap();
    assert!(dir.path().join("blobs").join(&key).is_file());
    store.close().await;
    let refused = Store::open(&StoreConfig::new(db, "ftp://example/x")).await;
    assert!(
        matches!(refused, Err(StoreError::UnsupportedBlobUrl { .. })),
        "{refused:?}"
    );
}

#[cfg(not(feature = "s3"))]
#[tokio::test]
async fn s3_needs_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/f.db?mode=rwc", dir.path().display());
    match Store::open(&StoreConfig::new(db, "s3://bucket/prefix")).await {
        Err(StoreError::UnsupportedBlobUrl { reason, .. }) => {
            assert!(reason.contains("`s3` feature"))
        }
        other => panic!("expected UnsupportedBlobUrl, got {other:?}"),
    }
}
