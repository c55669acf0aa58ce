//! The service end to end: every endpoint against the core's own answers, every error
//! with its status and message, batching, timeouts and graceful shutdown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use ndarray::Array2;
use projroute::{FlatIndex, ModelFile, Projector, Searcher, StaticEncoder, Tensor, INDEX_TENSOR};
use projroute_serve::{router, serve, Batching, Limits, Service};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const D: usize = 4;
const N_ANSWERS: usize = 5;

/// Deterministic values in (-1, 1).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 + seed * 104_729) as f32 * 0.618_034).sin()).collect()
}

fn limits() -> Limits {
    Limits { max_queries: 8, max_body_bytes: 4096, timeout: Duration::from_secs(10) }
}

const BATCHING: Option<Batching> = Some(Batching { wait: Duration::from_millis(2), max_rows: 16 });

/// A federated model (D -> D, 3 clusters, top-2) storing 5 answers and their texts.
fn federated_file(dir: &Path) -> PathBuf {
    let config = format!(
        r#"{{"format":"projroute","version":1,"kind":"federated","dim_in":{D},"dim_out":{D},
        "n_clusters":3,"temperature":0.1,"top_k":2}}"#
    );
    let tensors = BTreeMap::from([
        ("centroids".to_string(), Tensor::new(vec![3, D], values(3 * D, 1)).unwrap()),
        ("W".to_string(), Tensor::new(vec![3, D, D], values(3 * D * D, 2)).unwrap()),
        (INDEX_TENSOR.to_string(), Tensor::new(vec![N_ANSWERS, D], values(N_ANSWERS * D, 3)).unwrap()),
    ]);
    let texts: Vec<String> = (0..N_ANSWERS).map(|i| format!("answer {i}")).collect();
    let metadata = BTreeMap::from([("index.texts".to_string(), serde_json::to_string(&texts).unwrap())]);
    let path = dir.join("fed.safetensors");
    ModelFile::from_parts(&config, tensors, metadata).unwrap().save(&path).unwrap();
    path
}

/// A static model folder: words [UNK], a, bb, ccc with 2-d vectors -, (1, 0), (0, 1), (1, 1).
fn static_folder(dir: &Path) -> PathBuf {
    let vocab = json!({"[UNK]": 0, "a": 1, "bb": 2, "ccc": 3});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"normalize": true}"#).unwrap();
    let data: Vec<u8> = [0.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"embeddings": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, data.len()]}}).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir.to_path_buf()
}

/// An index of 3 answers over the static folder in `dir`.
fn index_file(dir: &Path) -> PathBuf {
    let enc = StaticEncoder::from_dir(static_folder(dir)).unwrap();
    let mut index = Searcher::build_index(&enc, &["a", "bb", "a ccc"], Some(vec![7, 8, 9])).unwrap();
    index.encoder = Some(".".into());
    let path = dir.join("answers.index");
    index.save(&path).unwrap();
    path
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<String>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

fn matrix(v: &Value) -> Array2<f32> {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let n = rows.len();
    Array2::from_shape_vec((n, rows[0].len()), rows.concat()).unwrap()
}

#[tokio::test]
async fn model_endpoints_answer_as_the_core_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = federated_file(dir.path());
    let core = Projector::load(&path).unwrap();
    let index = FlatIndex::new(core.index().unwrap().view2(INDEX_TENSOR).unwrap()).unwrap();
    for batching in [None, BATCHING] {
        let app = router(Service::open(&path, None, None).unwrap(), limits(), batching);
        let x = Array2::from_shape_vec((3, D), values(3 * D, 9)).unwrap();
        let body = json!({ "vectors": x.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>() }).to_string();
        let (status, out) = call(&app, "POST", "/project", Some(body.clone())).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        let want = core.project(x.view()).unwrap();
        let got = matrix(&out["vectors"]);
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + b.abs())), "{got} vs {want}");

        let body = json!({ "vectors": x.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>(), "k": 2 }).to_string();
        let (status, out) = call(&app, "POST", "/search", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        let (ids, scores) = index.search(want.view(), 2).unwrap();
        for q in 0..3 {
            for j in 0..2 {
                let hit = &out["results"][q][j];
                assert_eq!(hit["id"], json!(ids[[q, j]]));
                assert_eq!(hit["text"], json!(format!("answer {}", ids[[q, j]])));
                assert!((hit["score"].as_f64().unwrap() as f32 - scores[[q, j]]).abs() < 1e-6);
            }
        }
        // Without k: the default, 10, capped at the 5 answers.
        let body = json!({ "vectors": [values(D, 4)] }).to_string();
        let (_, out) = call(&app, "POST", "/search", Some(body)).await;
        assert_eq!(out["results"][0].as_array().unwrap().len(), N_ANSWERS);

        let (status, health) = call(&app, "GET", "/health", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            health,
            json!({"status": "ok", "kind": "federated", "input": "vectors", "dim_in": D, "dim_out": D, "answers": N_ANSWERS})
        );
        let (_, doc) = call(&app, "GET", "/openapi.json", None).await;
        assert_eq!(doc["openapi"], "3.1.0");
        let vector = &doc["paths"]["/project"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["properties"]["vectors"]["items"];
        assert_eq!((vector["minItems"].clone(), vector["maxItems"].clone()), (json!(D), json!(D)));
        assert!(vector.get("contains").is_some(), "a routed model's queries must not be zero");
        assert_eq!(
            doc["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["k"]
                ["maximum"],
            json!(N_ANSWERS)
        );
        assert!(doc["paths"].get("/embed").is_none());
        let (status, metrics) = call(&app, "GET", "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        let metrics = metrics.as_str().unwrap().to_string();
        assert!(metrics.contains("projroute_http_responses_total{path=\"/project\",status=\"200\"} 1"), "{metrics}");
        assert!(metrics.contains("projroute_batched_queries_total{path=\"/project\"} 3"), "{metrics}");
        assert!(metrics.contains("projroute_http_request_duration_seconds_count{path=\"/search\"} 2"), "{metrics}");
    }
}

#[tokio::test]
async fn bad_requests_get_a_4xx_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(Service::open(&federated_file(dir.path()), None, None).unwrap(), limits(), BATCHING);
    let q = values(D, 4);
    let many: Vec<Vec<f32>> = (0..9).map(|_| q.clone()).collect();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/project", "{\"vectors\": [[1, 2".into(), 400, "malformed JSON"),
        ("/project", "{\"vectors\": [[NaN, 1, 2, 3]]}".into(), 400, "NaN and Infinity are not JSON numbers"),
        ("/project", json!({"vectors": [[1, 2, 3]]}).to_string(), 422, "wrong dimension: query 0 has 3 values"),
        ("/project", json!({"vectors": [q, [1, 2, 3, 1e7]]}).to_string(), 422, "query 1, value 3 is 10000000"),
        ("/project", "{\"vectors\": [[1, 2, 3, 1e39]]}".into(), 422, "must be finite"),
        ("/project", json!({"vectors": [[0, 0, 1e-7, 0]]}).to_string(), 422, "query 0 is (nearly) zero"),
        ("/project", json!({"vectors": []}).to_string(), 422, "no queries"),
        ("/project", json!({"vectors": many}).to_string(), 422, "too many queries: 9 in one request, the limit is 8"),
        ("/project", json!({"vectors": [q], "keys": ["a"]}).to_string(), 422, "takes no `keys`"),
        ("/project", json!({"vectors": [q], "extra": 1}).to_string(), 422, "unknown field `extra`"),
        ("/project", json!({"vector": [q]}).to_string(), 422, "unknown field `vector`"),
        ("/project", json!({"vectors": [q], "keys": null}).to_string(), 422, "invalid type: null"),
        ("/project", format!("{{\"vectors\": [[{}]]}}", "1,".repeat(3000)), 413, "request body too large"),
        ("/search", json!({"vectors": [q], "k": 0}).to_string(), 422, "k out of range"),
        ("/search", json!({"vectors": [q], "k": 6}).to_string(), 422, "from 1 to 5"),
        ("/search", json!({"vectors": [q], "k": 2.5}).to_string(), 422, "k out of range"),
        ("/search", json!({"vectors": [q], "k": "2"}).to_string(), 422, "invalid type"),
    ];
    for (uri, body, status, message) in cases {
        let (got, out) = call(&app, "POST", uri, Some(body.clone())).await;
        let error = out["error"].as_str().unwrap_or_else(|| panic!("{uri} {body}: no JSON error: {out}"));
        assert_eq!(got.as_u16(), status, "{uri} {body}: {error}");
        assert!(error.contains(message), "{uri} {body}: {error:?} lacks {message:?}");
    }
    let req = Request::post("/project").body(Body::from(json!({"vectors": [q]}).to_string())).unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, out) = call(&app, "GET", "/nowhere", None).await;
    assert_eq!(
        (status, out["error"].as_str().unwrap()),
        (StatusCode::NOT_FOUND, "no such endpoint (see GET /openapi.json)")
    );
    let (status, out) = call(&app, "DELETE", "/project", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(out["error"].as_str().unwrap().contains("method not allowed"));
    // The server still answers.
    let (status, _) = call(&app, "POST", "/project", Some(json!({"vectors": [q]}).to_string())).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn index_endpoints_embed_and_search_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = index_file(dir.path());
    assert!(Service::open(&path, None, Some(Path::new("missing.safetensors"))).is_err());
    let core = Searcher::open_index(&path, None, None).unwrap();
    let app = router(Service::open(&path, None, None).unwrap(), limits(), BATCHING);
    let (status, out) = call(&app, "POST", "/embed", Some(json!({"texts": ["a bb", "zz"]}).to_string())).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let want = core.embed(&["a bb"]).unwrap();
    let got: Vec<f32> = serde_json::from_value(out["vectors"][0].clone()).unwrap();
    assert_eq!(got, want.row(0).to_vec());
    assert_eq!(out["vectors"][1], Value::Null, "a text without a known token has no vector");
    let body = json!({"texts": ["bb", "zz", "a"], "k": 2}).to_string();
    let (status, out) = call(&app, "POST", "/search", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let want = core.search(&["bb", "zz", "a"], 2).unwrap();
    for (q, hits) in want.iter().enumerate() {
        let got = out["results"][q].as_array().unwrap();
        assert_eq!(got.len(), hits.len());
        for (g, h) in got.iter().zip(hits) {
            assert_eq!((g["id"].as_i64().unwrap(), g["text"].as_str().unwrap()), (h.id, h.text.as_str()));
        }
    }
    let (_, out) = call(&app, "POST", "/search", Some(json!({"texts": ["a"]}).to_string())).await;
    assert_eq!(out["results"][0].as_array().unwrap().len(), 3, "k defaults to min(10, answers)");
    for (uri, body, message) in [
        ("/search", json!({"texts": ["a"], "k": 4}), "k out of range"),
        ("/embed", json!({"texts": []}), "no queries"),
        ("/embed", json!({"texts": [1]}), "invalid type"),
        ("/project", json!({"vectors": [[1, 0]]}), "no such endpoint"),
    ] {
        let (status, out) = call(&app, "POST", uri, Some(body.to_string())).await;
        assert!(status.is_client_error(), "{uri} {body}: {status}");
        assert!(out["error"].as_str().unwrap().contains(message), "{uri} {body}: {out}");
    }
    let (_, health) = call(&app, "GET", "/health", None).await;
    assert_eq!(
        health,
        json!({"status": "ok", "kind": null, "input": "texts", "dim_in": null, "dim_out": 2, "answers": 3})
    );
}

/// A loopback server for `path`; returns its address, a shutdown trigger and its task.
async fn spawn(
    path: &Path,
    limits: Limits,
    batching: Option<Batching>,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let app = router(Service::open(path, None, None).unwrap(), limits, batching);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// The start of a POST to `/project` whose body is `body`, cut after `sent` bytes.
async fn partial_post(addr: &str, body: &str, sent: usize) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /project HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..sent]).await.unwrap();
    stream
}

async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if n == 0 || text.contains("\r\n\r\n{") && text.ends_with('}') {
            return text.into_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_finish_after_shutdown_and_slow_ones_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = federated_file(dir.path());
    let body = json!({"vectors": [values(D, 4)]}).to_string();

    let (addr, stop, task) = spawn(&path, limits(), BATCHING).await;
    let mut stream = partial_post(&addr, &body, 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "the server waits for the request in flight");
    stream.write_all(&body.as_bytes()[5..]).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"vectors\""), "{response}");
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err(), "no longer listening");

    let quick = Limits { timeout: Duration::from_millis(100), ..limits() };
    let (addr, stop, task) = spawn(&path, quick, None).await;
    let mut stream = partial_post(&addr, &body, 5).await;
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("request timed out after 100 ms"), "{response}");
    stop.send(()).unwrap();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = federated_file(dir.path());
    let core = Projector::load(&path).unwrap();
    let wide = Some(Batching { wait: Duration::from_millis(20), max_rows: 64 });
    let app = router(Service::open(&path, None, None).unwrap(), limits(), wide);
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let q = values(D, 100 + i);
                let (status, out) = call(&app, "POST", "/project", Some(json!({"vectors": [q]}).to_string())).await;
                (q, status, out)
            })
        })
        .collect();
    for t in tasks {
        let (q, status, out) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let want = core.project(Array2::from_shape_vec((1, D), q).unwrap().view()).unwrap();
        let got = matrix(&out["vectors"]);
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())), "{got} vs {want}");
    }
    let (_, metrics) = call(&app, "GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    let batches: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("projroute_batches_total{path=\"/project\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(batches < 32, "32 concurrent requests ran in {batches} batches");
    assert!(metrics.contains("projroute_batched_requests_total{path=\"/project\"} 32"), "{metrics}");
}
