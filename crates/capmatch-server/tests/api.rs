//! The HTTP API end to end: a real server on a loopback port over a gallery indexed with
//! the tiny fixture models; every endpoint, status code, limit and token rule.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use capmatch_server::{AppState, RouterOptions, Settings};
use common::*;
use serde_json::{json, Value};

fn hit_paths(body: &Value) -> Vec<String> {
    body["hits"].as_array().unwrap().iter().map(|h| h["path"].as_str().unwrap().to_owned()).collect()
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_info_page_and_unknown_routes() {
    let g = gallery();
    let server = TestServer::start(config(&g.db)).await;

    let r = server.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    let info: Value = server.get("/api/info").await.json().await.unwrap();
    assert_eq!(info["files"], 6);
    let domains: Vec<(&str, u64)> =
        info["domains"].as_array().unwrap().iter().map(|d| (d["domain"].as_str().unwrap(), d["files"].as_u64().unwrap())).collect();
    assert_eq!(domains, vec![("cartoon", 3), ("photo", 3)]);
    assert_eq!(info["models"]["clip"], json!(clip_dir()));
    assert!(info["dim"].as_u64().unwrap() > 0);
    assert_eq!(info["skipped"], json!([]));
    assert_eq!(info["server"]["writable"], false);
    assert_eq!(info["server"]["max_k"], 1000);

    let page = server.get("/").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/assets/app.js") && html.contains("id=\"file-input\""));
    for (asset, kind) in [("/assets/app.js", "text/javascript"), ("/assets/app.css", "text/css"), ("/favicon.svg", "image/svg+xml")] {
        let r = server.get(asset).await;
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind));
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    for missing in ["/assets/nope.js", "/api/nothing", "/inspect", "/inspect/index.html"] {
        let r = server.get(missing).await;
        assert_eq!(r.status(), 404, "{missing}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    // Wrong method.
    assert_eq!(server.client.get(server.url("/api/search")).send().await.unwrap().status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn before_the_engine_is_ready_everything_but_the_page_answers_503() {
    let g = gallery();
    let settings = Settings {
        db: g.db.clone(),
        auth: capmatch_server::auth::Auth::read_only(),
        max_upload_bytes: 1 << 20,
        allowed_roots: Vec::new(),
        index_batch_size: 2,
        limits: Default::default(),
        inspect_dir: None,
    };
    let state = AppState::new(settings);
    state.set_waiting_for("loading the models");
    let app = capmatch_server::router(state.clone(), &RouterOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");

    for (method, path) in [("GET", "/healthz"), ("GET", "/api/info"), ("POST", "/api/search"), ("GET", "/api/images/1"), ("POST", "/knn-service")] {
        let r = client.request(method.parse().unwrap(), url(path)).json(&json!({"text": "a"})).send().await.unwrap();
        assert_eq!(r.status(), 503, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("loading the models"), "{body}");
    }
    assert_eq!(client.get(url("/")).send().await.unwrap().status(), 200);

    let engine = tokio::task::spawn_blocking({
        let config = config(&g.db);
        move || capmatch_server::open_engine(&config, false).unwrap()
    })
    .await
    .unwrap();
    state.set_engine(engine, Default::default());
    assert_eq!(client.get(url("/healthz")).send().await.unwrap().status(), 200);
    let r = client.post(url("/api/search")).json(&json!({"text": "a lemon"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn search_by_text_id_vector_and_image_file() {
    let g = gallery();
    let server = TestServer::start(config(&g.db)).await;

    let (status, body) = server.search(json!({"text": "a lemon"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "caption");
    let hits = body["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 6);
    assert!(body["took_ms"].as_f64().unwrap() >= 0.0);
    for (i, h) in hits.iter().enumerate() {
        assert_eq!(h["rank"], i + 1);
        let id = h["id"].as_u64().unwrap();
        assert_eq!(h["image_url"], format!("/api/images/{id}"));
        assert_eq!(h["thumb_url"], format!("/api/images/{id}/thumb"));
        assert!(g.files.iter().any(|f| path_str(f) == h["path"].as_str().unwrap()));
        assert!(["cartoon", "photo"].contains(&h["domain"].as_str().unwrap()));
        // The matched caption is one of the image's captions, and both components are there.
        let m = h["matched_caption"].as_u64().unwrap() as usize;
        assert_eq!(h["captions"][m], h["caption"]);
        assert_eq!(h["scores"]["caption"], h["score"]);
        assert!(h["scores"]["image"].is_number());
    }
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));

    // k, domain, min_score.
    let (_, body) = server.search(json!({"text": "a lemon", "k": 2, "domain": "photo"})).await;
    assert_eq!(body["hits"].as_array().unwrap().len(), 2);
    assert!(body["hits"].as_array().unwrap().iter().all(|h| h["domain"] == "photo"));
    let cut = scores[2];
    let (_, body) = server.search(json!({"text": "a lemon", "min_score": cut})).await;
    assert!(body["hits"].as_array().unwrap().iter().all(|h| h["score"].as_f64().unwrap() >= cut - 1e-6));
    let (_, body) = server.search(json!({"text": "a lemon", "domain": "sculpture"})).await;
    assert_eq!(body["hits"], json!([]));

    // More like this: an indexed image finds itself first in image mode, with score 1.
    let id = hits[3]["id"].as_u64().unwrap();
    for image_id in [json!(id), json!(id.to_string())] {
        let (status, body) = server.search(json!({"image_id": image_id, "mode": "image", "k": 3})).await;
        assert_eq!(status, 200);
        assert_eq!(body["hits"][0]["id"], id);
        assert!((body["hits"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    }

    // Text mode scores images; fused mixes both with the weight.
    let (_, text_mode) = server.search(json!({"text": "a lemon", "mode": "text"})).await;
    assert_eq!(text_mode["mode"], "text");
    for h in text_mode["hits"].as_array().unwrap() {
        assert_eq!(h["scores"]["image"], h["score"]);
    }
    let (_, fused) = server.search(json!({"text": "a lemon", "mode": "fused", "weight": 0.25})).await;
    for h in fused["hits"].as_array().unwrap() {
        let (c, i) = (h["scores"]["caption"].as_f64().unwrap(), h["scores"]["image"].as_f64().unwrap());
        assert!((h["score"].as_f64().unwrap() - (0.25 * c + 0.75 * i)).abs() < 1e-4);
    }

    // A vector of the index's dimension; a vector equal to a stored one finds it.
    let info: Value = server.get("/api/info").await.json().await.unwrap();
    let dim = info["dim"].as_u64().unwrap() as usize;
    let mut v = vec![0.0f32; dim];
    v[0] = 1.0;
    let (status, _) = server.search(json!({"vector": v, "mode": "image"})).await;
    assert_eq!(status, 200);

    // An image file, as a multipart form with the options as fields.
    let photo = g.files.iter().find(|f| f.ends_with("photo_lemon.png")).unwrap();
    let form = reqwest::multipart::Form::new()
        .part("image", multipart_image(photo))
        .text("mode", "image")
        .text("k", "3")
        .text("domain", "photo");
    let r = server.client.post(server.url("/api/search")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(hit_paths(&body)[0], path_str(photo));
    assert!((body["hits"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    assert_eq!(body["hits"].as_array().unwrap().len(), 3);
    // Caption mode (the default) with a query image, and caption-text (the query is captioned).
    for mode in ["caption", "caption-text"] {
        let form = reqwest::multipart::Form::new().part("image", multipart_image(photo)).text("mode", mode);
        let r = server.client.post(server.url("/api/search")).multipart(form).send().await.unwrap();
        assert_eq!(r.status(), 200, "{mode}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["hits"].as_array().unwrap().len(), 6);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_searches_get_the_right_status_and_a_json_error() {
    let g = gallery();
    let server = TestServer::start(ServerConfig { max_upload_bytes: 1 << 20, ..config(&g.db) }).await;
    for (body, status) in [
        (json!({}), 422),
        (json!({"text": "a", "image_id": 1}), 422),
        (json!({"text": "a", "k": 0}), 422),
        (json!({"text": "a", "k": 1001}), 422),
        (json!({"text": "a", "mode": "colour"}), 422),
        (json!({"text": "a", "weight": 2.0}), 422),
        (json!({"image_id": 1, "mode": "text"}), 422),
        (json!({"vector": [1.0, 2.0]}), 422),
        (json!({"vector": [0.0, 0.0]}), 422),
        (json!({"image_id": "x"}), 422),
        (json!({"image_id": 12345}), 404),
        (json!({"text": 5}), 400),
        (json!({"query": "a"}), 400),
    ] {
        let (got, answer) = server.search(body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
    }
    let r = server.client.post(server.url("/api/search")).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());

    let form = |bytes: Vec<u8>, name: &str| {
        reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()))
    };
    let post = |f: reqwest::multipart::Form| server.client.post(server.url("/api/search")).multipart(f).send();
    // Not an image: 415. A damaged one: 422. Over the body limit: 413.
    let r = post(form(b"just some text".to_vec(), "notes.txt")).await.unwrap();
    assert_eq!(r.status(), 415);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("not a supported image format"));
    let png = std::fs::read(&g.files[0]).unwrap();
    let r = post(form(png[..png.len() / 3].to_vec(), "cut.png")).await.unwrap();
    assert_eq!(r.status(), 422);
    // The client gets the 413 and its reason, not a broken pipe: the server reads the
    // body it refuses (this raced before, so a few times).
    for _ in 0..5 {
        let r = post(form(vec![0x89; 2 << 20], "big.png")).await.expect("a 413 answer, not a connection error");
        assert_eq!(r.status(), 413);
        let error = r.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("over this server's limit of 1048576 bytes"), "{error}");
    }
    // A form with an unknown field, or two images.
    let r = post(form(png.clone(), "a.png").text("colour", "red")).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = post(form(png.clone(), "a.png").part("image", reqwest::multipart::Part::bytes(png.clone()))).await.unwrap();
    assert_eq!(r.status(), 422);
    // The server still answers well after all that.
    assert_eq!(server.search(json!({"text": "ok"})).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn originals_and_thumbnails_by_id_and_nothing_else() {
    let g = gallery();
    let server = TestServer::start(config(&g.db)).await;
    let (_, body) = server.search(json!({"text": "grapes", "k": 6})).await;
    let hit = body["hits"].as_array().unwrap().iter().find(|h| h["path"].as_str().unwrap().ends_with("cartoon_grapes.png")).unwrap().clone();
    let id = hit["id"].as_u64().unwrap();

    let r = server.get(&format!("/api/images/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
    assert_eq!(r.bytes().await.unwrap().to_vec(), std::fs::read(hit["path"].as_str().unwrap()).unwrap());

    let thumb = server.get(&format!("/api/images/{id}/thumb")).await;
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    let etag = thumb.headers()["etag"].to_str().unwrap().to_owned();
    let img = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    let original = image::open(hit["path"].as_str().unwrap()).unwrap();
    let expected_long = original.width().max(original.height()).min(256);
    assert_eq!(img.width().max(img.height()), expected_long);
    let small = server.get(&format!("/api/images/{id}/thumb?size=40")).await;
    let img = image::load_from_memory(&small.bytes().await.unwrap()).unwrap();
    assert_eq!(img.width().max(img.height()), 40);
    // Cached on disk, by content hash and size; revalidated by ETag.
    let cached: Vec<String> = std::fs::read_dir(capmatch_server::images::thumbs_dir(&g.db))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(cached.iter().any(|n| n.ends_with("-256.jpg")) && cached.iter().any(|n| n.ends_with("-40.jpg")), "{cached:?}");
    let again = server.client.get(server.url(&format!("/api/images/{id}/thumb"))).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    for bad in ["0", "513", "big", "-1"] {
        let r = server.get(&format!("/api/images/{id}/thumb?size={bad}")).await;
        assert_eq!(r.status(), 422, "size={bad}");
    }

    // Unknown ids, and every way of naming a file instead of an id.
    for path in [
        "/api/images/12345".to_owned(),
        "/api/images/0".to_owned(),
        "/api/images/abc".to_owned(),
        "/api/images/..%2F..%2Fetc%2Fpasswd".to_owned(),
        "/api/images/..%2F..%2Fetc%2Fpasswd/thumb".to_owned(),
        "/api/images/%2Fetc%2Fpasswd".to_owned(),
        format!("/api/images/{id}%00"),
        format!("/api/images/{id}%2F..%2F..%2Fetc%2Fpasswd"),
        format!("/api/images/-{id}"),
    ] {
        let r = server.get(&path).await;
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}");
    }
    for path in ["/api/images/../../../../etc/passwd", "/api/images/1/../../../etc/passwd", "/api/../etc/passwd", "/../../etc/passwd"] {
        let (status, text) = server.raw_get(path).await;
        assert_ne!(status, 200, "{path}");
        assert!(!text.contains("root:"), "{path}");
    }
    // A gallery file that disappeared: 404, not 500.
    let gone = g.files.iter().find(|f| f.ends_with("photo_grapes.png")).unwrap();
    std::fs::remove_file(gone).unwrap();
    let gone_id = body["hits"].as_array().unwrap().iter().find(|h| h["path"] == json!(path_str(gone))).unwrap()["id"].as_u64().unwrap();
    assert_eq!(server.get(&format!("/api/images/{gone_id}")).await.status(), 404);
    assert_eq!(server.get(&format!("/api/images/{gone_id}/thumb?size=64")).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn write_endpoints_need_a_token_file_and_the_right_token() {
    let g = gallery();
    let png = g.files[0].clone();
    let upload = |server: &TestServer, auth: Option<&str>| {
        let form = reqwest::multipart::Form::new().part("image", multipart_image(&png));
        let mut req = server.client.post(server.url("/api/images")).multipart(form);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.send()
    };
    {
        let read_only = TestServer::start(config(&g.db)).await;
        for auth in [None, Some(format!("Bearer {TOKEN}"))] {
            let r = upload(&read_only, auth.as_deref()).await.unwrap();
            assert_eq!(r.status(), 403);
            assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("--token-file"));
        }
        let r = read_only.client.post(read_only.url("/api/index")).bearer_auth(TOKEN).json(&json!({"path": "/tmp"})).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(read_only.client.get(read_only.url("/api/jobs/1")).bearer_auth(TOKEN).send().await.unwrap().status(), 403);
        read_only.shut_down().await.unwrap();
    }
    let server = TestServer::start(writable_config(&g.db, g.tmp.path())).await;
    let r = upload(&server, None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    for wrong in ["Bearer nope", "Bearer test-token-0123456789abcdeF", "Basic dGVzdA==", "Bearer"] {
        let status = upload(&server, Some(wrong)).await.unwrap().status();
        assert!(status == 403 || status == 401, "{wrong}: {status}");
    }
    assert_eq!(upload(&server, Some("Bearer nope")).await.unwrap().status(), 403);
    let r = server.client.post(server.url("/api/index")).json(&json!({"path": "/tmp"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(server.get("/api/jobs/1").await.status(), 401);
    let r = upload(&server, Some(&format!("Bearer {TOKEN}"))).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_indexed_and_searchable_and_bad_ones_refused() {
    let g = gallery();
    let server = TestServer::start(ServerConfig { max_upload_bytes: 1 << 20, ..writable_config(&g.db, g.tmp.path()) }).await;
    let new = write_variants(&g.tmp.path().join("new"), 2, 0);
    let send = |form: reqwest::multipart::Form| server.client.post(server.url("/api/images")).bearer_auth(TOKEN).multipart(form).send();

    let form = reqwest::multipart::Form::new()
        .text("domain", "sketch")
        .part("image", multipart_image(&new[0]))
        .part("image", reqwest::multipart::Part::bytes(b"not an image".to_vec()).file_name("notes.txt"))
        .part("image", multipart_image(&new[1]));
    let r = send(form).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["indexed"], 2);
    let images = body["images"].as_array().unwrap();
    assert_eq!(images[0]["name"], "v0000.png");
    assert!(images[1]["id"].is_null() && images[1]["error"].as_str().unwrap().contains("not a supported image format"));
    let id = images[0]["id"].as_u64().unwrap();

    // In the gallery at once: info, search by the upload's bytes, its original.
    let info: Value = server.get("/api/info").await.json().await.unwrap();
    assert_eq!(info["files"], 8);
    assert!(info["domains"].as_array().unwrap().iter().any(|d| d["domain"] == "sketch" && d["files"] == 2));
    let form = reqwest::multipart::Form::new().part("image", multipart_image(&new[0])).text("mode", "image");
    let found: Value = server.client.post(server.url("/api/search")).multipart(form).send().await.unwrap().json().await.unwrap();
    assert_eq!(found["hits"][0]["id"], id);
    assert_eq!(found["hits"][0]["domain"], "sketch");
    let original = server.get(&format!("/api/images/{id}")).await.bytes().await.unwrap();
    assert_eq!(original.to_vec(), std::fs::read(&new[0]).unwrap());

    // Only files that are not images: 415. Over the limit: 413. Nothing: 422.
    let form = reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(b"GIF89a?".to_vec()).file_name("x.gif"));
    let r = send(form).await.unwrap();
    assert!(r.status() == 422 || r.status() == 415, "{}", r.status());
    let form = reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(b"%PDF-1.4".to_vec()).file_name("x.pdf"));
    assert_eq!(send(form).await.unwrap().status(), 415);
    let form = reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(vec![7u8; (1 << 20) + 10]).file_name("big.png"));
    let r = send(form).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    assert_eq!(send(reqwest::multipart::Form::new().text("domain", "x")).await.unwrap().status(), 422);
    let form = reqwest::multipart::Form::new().text("domain", "").part("image", multipart_image(&new[0]));
    assert_eq!(send(form).await.unwrap().status(), 422);
    // A decompression bomb's header: refused as too large, nothing indexed.
    let form = reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(png_claiming(100_000, 100_000)).file_name("bomb.png"));
    assert_eq!(send(form).await.unwrap().status(), 413);
    let info: Value = server.get("/api/info").await.json().await.unwrap();
    assert_eq!(info["files"], 8);
}

/// A decompression bomb: a PNG whose header announces `w` × `h` pixels, with a tiny IDAT.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn index_jobs_run_in_the_background_under_allowed_roots_only() {
    let g = gallery();
    let root = g.tmp.path().join("incoming");
    write_variants(&root.join("batch1"), 5, 0);
    std::fs::create_dir_all(g.tmp.path().join("elsewhere")).unwrap();
    let config = ServerConfig { allow_index_roots: vec![root.clone()], ..writable_config(&g.db, g.tmp.path()) };
    let server = TestServer::start(config).await;
    let post = |body: Value| server.client.post(server.url("/api/index")).bearer_auth(TOKEN).json(&body).send();

    let r = post(json!({"path": path_str(&root.join("batch1")), "domain": "new"})).await.unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_u64().unwrap();
    assert!(["queued", "running"].contains(&job["state"].as_str().unwrap()));
    let done = wait_for_job(&server, id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["report"]["indexed"], 5);
    assert_eq!((done["total"].as_u64(), done["done"].as_u64()), (Some(5), Some(5)));
    let (_, body) = server.search(json!({"text": "x", "domain": "new", "k": 10})).await;
    assert_eq!(body["hits"].as_array().unwrap().len(), 5);

    for (body, status) in [
        (json!({"path": path_str(&g.tmp.path().join("elsewhere"))}), 403),
        (json!({"path": format!("{}/../elsewhere", path_str(&root))}), 403),
        (json!({"path": "/etc"}), 403),
        (json!({"path": path_str(&root.join("missing"))}), 404),
        (json!({"path": "incoming/batch1"}), 422),
        (json!({"path": path_str(&root.join("batch1/v0000.png"))}), 422),
        (json!({"path": path_str(&root), "domain": ""}), 422),
        (json!({"folder": "x"}), 400),
    ] {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }
    assert_eq!(server.client.get(server.url("/api/jobs/999")).bearer_auth(TOKEN).send().await.unwrap().status(), 404);
    assert_eq!(server.client.get(server.url("/api/jobs/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 404);

    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("capmatch_index_jobs{state=\"done\"} 1"), "{metrics}");
    assert!(metrics.contains("capmatch_index_job_files_total 5"), "{metrics}");
}

async fn wait_for_job(server: &TestServer, id: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let job: Value = server.client.get(server.url(&format!("/api/jobs/{id}"))).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        if !["queued", "running"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_the_running_batch_commit_and_loses_nothing() {
    let g = gallery();
    let root = g.tmp.path().join("incoming");
    let total = 120;
    write_variants(&root, total, 0);
    let config = ServerConfig { allow_index_roots: vec![root.clone()], index_batch_size: 2, ..writable_config(&g.db, g.tmp.path()) };
    let server = TestServer::start(config).await;
    let r = server.client.post(server.url("/api/index")).bearer_auth(TOKEN).json(&json!({"path": path_str(&root)})).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    // Stop while the job is under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let job: Value = server.client.get(server.url(&format!("/api/jobs/{id}"))).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        assert!(!["failed", "cancelled"].contains(&job["state"].as_str().unwrap()), "{job}");
        if job["done"].as_u64().unwrap() >= 2 || job["state"] == "done" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let state = server.state.clone();
    server.shut_down().await.unwrap();
    let job = state.jobs().get(id).unwrap();
    let committed = job.done;
    assert!(committed >= 2);
    if job.state == capmatch_server::jobs::JobState::Cancelled {
        assert!(committed < total, "{job:?}");
        assert!(job.report.as_ref().unwrap().cancelled);
    } else {
        assert_eq!(job.state, capmatch_server::jobs::JobState::Done);
        assert_eq!(committed, total);
    }
    // Every committed file is in the gallery, whole; the next run finishes the folder.
    let reader = capmatch_engine::Engine::open_reader(&g.db, Default::default()).unwrap();
    assert_eq!(reader.len().unwrap(), 6 + committed);
    assert!(reader.check(false).unwrap().problems.is_empty());
    drop(reader);
    let report = index(&g.db, &[root], &capmatch_engine::NoObserver);
    assert_eq!((report.indexed, report.unchanged), (total - committed, committed));
}

#[test]
fn a_read_only_server_sees_each_commit_of_another_writer() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let g = gallery();
    let server = runtime.block_on(TestServer::start(config(&g.db)));
    let more = write_variants(&g.tmp.path().join("more"), 4, 0);

    /// After each commit of the writer, asks the server what it sees.
    struct Probe<'a> {
        runtime: &'a tokio::runtime::Runtime,
        server: &'a TestServer,
        seen: std::sync::Mutex<Vec<(usize, u64, usize)>>,
    }
    impl capmatch_engine::IndexObserver for Probe<'_> {
        fn progressed(&self, done: usize) {
            let (files, hits) = self.runtime.block_on(async {
                let info: Value = self.server.get("/api/info").await.json().await.unwrap();
                let (_, body) = self.server.search(json!({"text": "x", "k": 100})).await;
                (info["files"].as_u64().unwrap(), body["hits"].as_array().unwrap().len())
            });
            self.seen.lock().unwrap().push((done, files, hits));
        }
    }
    let probe = Probe { runtime: &runtime, server: &server, seen: Default::default() };
    index(&g.db, &[more[0].parent().unwrap().to_path_buf()], &probe);
    assert_eq!(*probe.seen.lock().unwrap(), vec![(2, 8, 8), (4, 10, 10)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn clip_retrieval_clients_work_unchanged() {
    let g = gallery();
    let server = TestServer::start(config(&g.db)).await;
    let indices: Value = server.get("/indices-list").await.json().await.unwrap();
    assert_eq!(indices, json!(["gallery"]));

    // ClipClient posts JSON with no Content-Type, and every option it knows.
    let knn = |body: Value| server.client.post(server.url("/knn-service")).body(body.to_string()).send();
    let defaults = json!({"deduplicate": true, "use_safety_model": true, "use_violence_detector": true, "indice_name": "gallery",
                          "use_mclip": false, "aesthetic_score": 9, "aesthetic_weight": 0.5, "num_result_ids": 3, "verbose": false,
                          "image_url": null, "embedding_input": null});
    let with = |extra: Value| {
        let mut b = defaults.clone();
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let r = knn(with(json!({"text": "a lemon", "image": null, "modality": "image", "num_images": 3}))).await.unwrap();
    assert_eq!(r.status(), 200);
    let hits: Value = r.json().await.unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 3);
    for h in hits.as_array().unwrap() {
        let keys: Vec<&str> = h.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["caption", "id", "similarity", "url"]);
        assert_eq!(h["url"], format!("http://{}/api/images/{}", server.addr, h["id"]));
    }
    // The same text through /api/search in text mode gives the same ranking.
    let (_, ours) = server.search(json!({"text": "a lemon", "mode": "text", "k": 3})).await;
    let knn_ids: Vec<u64> = hits.as_array().unwrap().iter().map(|h| h["id"].as_u64().unwrap()).collect();
    let our_ids: Vec<u64> = ours["hits"].as_array().unwrap().iter().map(|h| h["id"].as_u64().unwrap()).collect();
    assert_eq!(knn_ids, our_ids);

    // A base64 image against the image vectors finds itself; the text modality searches captions.
    let photo = std::fs::read(g.files.iter().find(|f| f.ends_with("photo_pineapple.png")).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&photo);
    let hits: Value = knn(with(json!({"image": b64, "modality": "image", "num_images": 2}))).await.unwrap().json().await.unwrap();
    assert!((hits[0]["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    let hits_text: Value =
        knn(with(json!({"image": format!("data:image/png;base64,{b64}"), "modality": "text", "num_images": 6}))).await.unwrap().json().await.unwrap();
    assert_eq!(hits_text.as_array().unwrap().len(), 6);
    let first = hits[0]["id"].as_u64().unwrap();

    for (body, status) in [
        (with(json!({"image_url": "http://169.254.169.254/latest", "modality": "image"})), 422),
        (with(json!({"text": "a", "modality": "audio"})), 422),
        (with(json!({"image": "!!!not base64!!!"})), 422),
        (with(json!({"image": base64::engine::general_purpose::STANDARD.encode(b"text")})), 415),
        (defaults.clone(), 422),
    ] {
        assert_eq!(knn(body.clone()).await.unwrap().status(), status, "{body}");
    }
    assert_eq!(knn(json!("not an object")).await.unwrap().status(), 400);

    let meta: Value = server
        .client
        .post(server.url("/metadata"))
        .body(json!({"ids": [first, 12345], "indice_name": "gallery"}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta[0]["id"], first);
    assert_eq!(meta[0]["metadata"]["url"], format!("http://{}/api/images/{first}", server.addr));
    assert!(meta[0]["metadata"]["caption"].is_string());
    assert!(meta[1]["metadata"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inspection_report_folder_is_served_and_nothing_beside_it() {
    let g = gallery();
    let report = g.tmp.path().join("report");
    std::fs::create_dir_all(report.join("img")).unwrap();
    std::fs::write(report.join("index.html"), "<h1>report</h1>").unwrap();
    std::fs::write(report.join("img/a.svg"), "<svg xmlns='http://www.w3.org/2000/svg'/>").unwrap();
    std::fs::write(g.tmp.path().join("secret.txt"), "root:x:0:0").unwrap();
    let server = TestServer::start(ServerConfig { inspect_dir: Some(report.clone()), ..config(&g.db) }).await;
    let r = server.get("/inspect/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "<h1>report</h1>");
    assert_eq!(server.get("/inspect/img/a.svg").await.status(), 200);
    for path in ["/inspect/../secret.txt", "/inspect/..%2Fsecret.txt", "/inspect/%2E%2E/secret.txt", "/inspect/img/../../secret.txt", "/inspect//etc/passwd", "/inspect/%2Fetc%2Fpasswd"] {
        let (status, text) = server.raw_get(path).await;
        assert_ne!(status, 200, "{path}");
        assert!(!text.contains("root:"), "{path}");
    }
    let info: Value = server.get("/api/info").await.json().await.unwrap();
    assert_eq!(info["server"]["inspect"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_batches_and_the_gallery() {
    let g = gallery();
    let server = TestServer::start(config(&g.db)).await;
    // Eight searches in flight at once.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (client, url) = (server.client.clone(), server.url("/api/search"));
        set.spawn(async move { client.post(url).json(&json!({"text": format!("query {i}")})).send().await.unwrap().status() });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    server.get("/api/images/12345").await;
    let r = server.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(text.contains("capmatch_http_requests_total{endpoint=\"/api/search\",method=\"POST\",status=\"200\"} 8"), "{text}");
    assert!(text.contains("capmatch_http_requests_total{endpoint=\"/api/images/{id}\",method=\"GET\",status=\"404\"} 1"), "{text}");
    assert!(text.contains("capmatch_http_request_duration_seconds_count{endpoint=\"/api/search\"} 8"), "{text}");
    assert!(text.contains("capmatch_gallery_images 6"), "{text}");
    let batches = metric(&text, "capmatch_search_batch_size_count");
    let searched = metric(&text, "capmatch_search_batch_size_sum");
    assert_eq!(searched, 8.0);
    assert!((1.0..=8.0).contains(&batches));
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_is_off_unless_an_origin_is_allowed() {
    let g = gallery();
    let preflight = |server: &TestServer| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.url("/api/search"))
            .header("Origin", "http://tool.example")
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    let closed = TestServer::start(config(&g.db)).await;
    let r = preflight(&closed).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    closed.shut_down().await.unwrap();
    let open = TestServer::start(ServerConfig { cors: vec!["http://tool.example".into()], ..config(&g.db) }).await;
    let r = preflight(&open).await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "http://tool.example");
    let r = open.client.post(open.url("/api/search")).header("Origin", "http://evil.example").json(&json!({"text": "a"})).send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    // A read-only server needs a gallery.
    let server = capmatch_server::Server::bind(config(&tmp.path().join("none.db"))).await.unwrap();
    let err = server.run(std::future::pending()).await.unwrap_err();
    assert!(format!("{err:#}").contains("no gallery at"), "{err:#}");
    // An empty token file, a missing index root.
    let token = tmp.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let err = capmatch_server::Server::bind(ServerConfig { token_file: Some(token), ..config(&tmp.path().join("x.db")) }).await.err().unwrap();
    assert!(format!("{err:#}").contains("is empty"), "{err:#}");
    let err = capmatch_server::Server::bind(ServerConfig { allow_index_roots: vec![tmp.path().join("missing")], ..config(&tmp.path().join("x.db")) })
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("--allow-index-root"), "{err:#}");
}

use capmatch_server::ServerConfig;
