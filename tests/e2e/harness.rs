//! Test harness: builds the real `orgloop` binary and the example plugins once, gives each test its
//! own directory, writes module files, runs the daemon on a free port, posts webhooks over real
//! HTTP on 127.0.0.1, and records what a real HTTP sink receives.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Whether the suite runs its plugins in child processes (the `e2e-process` target).
pub fn isolated() -> bool {
    crate::ISOLATION == "process"
}

/// The state a drain report gives a retired plugin build: `unloaded` (checked against the
/// daemon's mappings) or, isolated, `process_exited` (its child process reaped).
pub fn retired() -> &'static str {
    if isolated() {
        "process_exited"
    } else {
        "unloaded"
    }
}

/// What `module reload --wait` prints for a retired plugin build.
pub fn retired_text() -> &'static str {
    if isolated() {
        "process exited (verified: pid "
    } else {
        "unloaded (verified: no longer mapped)"
    }
}

/// The plugin processes (`orgloop plugin-host`) that are children of `pid`.
pub fn plugin_processes(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the command may contain spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && cmdline.split(|b| *b == 0).nth(1) == Some(b"plugin-host") {
            found.push(child);
        }
    }
    found
}

/// How long any wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// `target/debug`, after building the binary and every plugin (once per test run).
pub fn build_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let packages = [
                "orgloop",
                "orgloop-filters",
                "orgloop-http",
                "orgloop-agent",
                "orgloop-fixture-abi-mismatch",
                "orgloop-fixture-crashy",
            ];
            let mut cmd = Command::new(env!("CARGO"));
            cmd.arg("build").current_dir(workspace());
            for p in packages {
                cmd.args(["-p", p]);
            }
            let out = cmd.output().expect("run cargo build");
            assert!(
                out.status.success(),
                "cargo build failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            target_dir().join("debug")
        })
        .clone()
}

pub fn orgloop_bin() -> PathBuf {
    build_dir().join("orgloop")
}

/// The built example plugin `name` (`filters`, `http`, `agent`).
pub fn plugin(name: &str) -> PathBuf {
    build_dir().join(format!("liborgloop_{name}.so"))
}

/// A scratch directory for one test, emptied first.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = target_dir().join("e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `files` (relative path → content) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// A runtime shared by the harness's HTTP client and sinks.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A response: status, headers (lower-case names), and the body parsed as JSON (`Null` when it is
/// not JSON) and as text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub json: Value,
    /// The body as text.
    pub text: String,
}

/// Sends one HTTP request.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    static CLIENT: OnceLock<
        Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    > = OnceLock::new();
    let client = CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http());
    let make = || {
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
    };
    rt().block_on(async {
        let send = |req| async { tokio::time::timeout(WAIT, client.request(req)).await };
        let resp = match send(make()).await.expect("request timed out") {
            // A pooled connection the daemon closed (idle past its timeout) just as it was
            // reused: a GET is safe to send again, on a new one.
            Err(e) if method == "GET" && !e.is_connect() => {
                send(make()).await.expect("request timed out")
            }
            r => r,
        }
        .expect("request failed");
        let status = resp.status().as_u16();
        let headers = header_map(resp.headers());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    })
}

fn header_map(headers: &axum::http::HeaderMap) -> HashMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect()
}

/// One request the sink received, and the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub status: u16,
}

/// The `payload.n` of each delivered event, sorted: which numbered events arrived, and how often.
pub fn payload_ns(received: &[Received]) -> Vec<u64> {
    let mut ns: Vec<u64> = received
        .iter()
        .map(|r| r.body["event"]["payload"]["n"].as_u64().unwrap())
        .collect();
    ns.sort_unstable();
    ns
}

/// A real HTTP server on 127.0.0.1 that records every request and answers with a settable status.
pub struct Sink {
    pub port: u16,
    received: Arc<(Mutex<Vec<Received>>, Condvar)>,
    status: Arc<AtomicU16>,
    /// When not 0: every this many-th request is answered 503 (a flaky target).
    fail_every: Arc<AtomicU64>,
}

impl Sink {
    pub fn start() -> Sink {
        let received: Arc<(Mutex<Vec<Received>>, Condvar)> = Default::default();
        let status = Arc::new(AtomicU16::new(200));
        let fail_every = Arc::new(AtomicU64::new(0));
        let (r, s, f) = (received.clone(), status.clone(), fail_every.clone());
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: Bytes| {
                let (r, s, f) = (r.clone(), s.clone(), f.clone());
                async move {
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut received = r.0.lock().unwrap();
                    let every = f.load(Ordering::SeqCst);
                    let status = if every > 0 && (received.len() as u64 + 1).is_multiple_of(every) {
                        503
                    } else {
                        s.load(Ordering::SeqCst)
                    };
                    received.push(Received {
                        path: uri.path().to_owned(),
                        headers: header_map(&headers),
                        body,
                        status,
                    });
                    drop(received);
                    r.1.notify_all();
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            },
        );
        rt().spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink {
            port,
            received,
            status,
            fail_every,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Makes every `n`-th request from now on fail with 503 (0: none).
    pub fn fail_every(&self, n: u64) {
        self.fail_every.store(n, Ordering::SeqCst);
    }

    /// Makes the sink answer with `status` from now on.
    pub fn respond_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.0.lock().unwrap().clone()
    }

    /// The `payload.n` of each event the sink answered with a 2xx, sorted.
    pub fn delivered_ns(&self) -> Vec<u64> {
        let ok: Vec<Received> = self
            .received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect();
        payload_ns(&ok)
    }

    /// Waits until the sink answered 2xx to events with every `payload.n` in `ns`; returns how
    /// often each arrived with a 2xx, for the test to count duplicates.
    pub fn wait_delivered(&self, ns: &[u64]) -> HashMap<u64, usize> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut counts: HashMap<u64, usize> = HashMap::new();
            for n in self.delivered_ns() {
                *counts.entry(n).or_default() += 1;
            }
            let missing: Vec<u64> = ns
                .iter()
                .copied()
                .filter(|n| !counts.contains_key(n))
                .collect();
            if missing.is_empty() {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} events never delivered: {missing:?}",
                missing.len(),
                ns.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    pub fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        let mut got = self.received.0.lock().unwrap();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "sink got {} requests, expected {n}: {got:#?}",
                got.len()
            );
            got = self.received.1.wait_timeout(got, left).unwrap().0;
        }
        got.clone()
    }
}

/// Environment for a daemon or CLI run: its own home, plugins from `target/debug`.
pub fn base_env(home: &Path) -> Vec<(String, String)> {
    vec![
        ("ORGLOOP_HOME".into(), home.display().to_string()),
        ("PLUGIN_DIR".into(), build_dir().display().to_string()),
        ("ORGLOOP_LOG".into(), "info".into()),
    ]
}

/// Runs `orgloop args...` to completion.
pub fn orgloop(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(orgloop_bin())
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .expect("run orgloop")
}

/// A running daemon, stopped (SIGTERM) when dropped.
pub struct Daemon {
    child: Child,
    pub port: u16,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts `orgloop start <dirs>` on a free port and waits until it listens.
    pub fn start(dirs: &[&Path], env: &[(String, String)]) -> Daemon {
        Self::try_start(dirs, env).unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    }

    /// Like [`start`](Self::start); on failure returns the daemon's output.
    pub fn try_start(dirs: &[&Path], env: &[(String, String)]) -> Result<Daemon, String> {
        Self::try_start_with(dirs, &[], env)
    }

    /// Like [`try_start`](Self::try_start), with extra `orgloop start` flags.
    pub fn try_start_with(
        dirs: &[&Path],
        flags: &[&str],
        env: &[(String, String)],
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new(orgloop_bin());
        cmd.arg("start")
            .args(dirs)
            .args(["--port", "0"])
            .args(["--isolation", crate::ISOLATION])
            .args(flags)
            .envs(env.iter().cloned())
            .env("NO_COLOR", "1");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn orgloop");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Default::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.0.lock().unwrap().push(strip_ansi(&line));
                    log.1.notify_all();
                }
            });
        }
        let mut daemon = Daemon {
            child,
            port: 0,
            log,
            env: env.to_vec(),
        };
        let line = daemon.wait_log_or_exit("listening on http://127.0.0.1:")?;
        let port = line
            .split("http://127.0.0.1:")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>();
        daemon.port = port.parse().unwrap();
        Ok(daemon)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `POST /webhook/<source>` with a JSON body.
    pub fn post(&self, source: &str, body: &Value) -> Reply {
        request(
            "POST",
            &self.url(&format!("/webhook/{source}")),
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    pub fn get(&self, path: &str) -> Reply {
        request("GET", &self.url(path), &[], b"")
    }

    /// Runs `orgloop <args> --port <this daemon's port>` with the daemon's environment.
    pub fn cli(&self, args: &[&str]) -> Output {
        let port = self.port.to_string();
        let mut all = args.to_vec();
        all.extend(["--port", &port]);
        orgloop(&all, &self.env)
    }

    /// Runs a CLI command that must succeed; returns what it printed on stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs a CLI command that prints JSON; returns its exit code and the JSON.
    pub fn cli_json(&self, args: &[&str]) -> (i32, Value) {
        let out = self.cli(args);
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no JSON ({e}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), json)
    }

    /// A control API request with this daemon's token.
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let home = &self
            .env
            .iter()
            .find(|(k, _)| k == "ORGLOOP_HOME")
            .unwrap()
            .1;
        let token = std::fs::read_to_string(
            Path::new(home)
                .join("control")
                .join(format!("{}.token", self.port)),
        )
        .unwrap();
        let auth = format!("Bearer {}", token.trim());
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        request(
            method,
            &self.url(path),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
    }

    /// The module's status from the control API.
    pub fn module_status(&self, name: &str) -> Value {
        let reply = self.control("GET", &format!("/control/modules/{name}"), None);
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json
    }

    /// Waits until `check` holds for module `name`'s status.
    pub fn wait_status(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.module_status(name);
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; module status: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().join("\n")
    }

    /// Waits for a printed line containing `needle`; returns it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        self.wait_log_or_exit(needle)
            .unwrap_or_else(|log| panic!("no log line with {needle:?}:\n{log}"))
    }

    /// Waits until `n` printed lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        let mut lines = self.log.0.lock().unwrap();
        loop {
            let found = lines.iter().filter(|l| l.contains(needle)).count();
            if found >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{found} lines with {needle:?}, expected {n}:\n{}",
                lines.join("\n")
            );
            lines = self
                .log
                .1
                .wait_timeout(lines, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }

    fn wait_log_or_exit(&mut self, needle: &str) -> Result<String, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let lines = self.log.0.lock().unwrap();
                if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                    return Ok(l.clone());
                }
                let (lines, _) = self
                    .log
                    .1
                    .wait_timeout(lines, Duration::from_millis(50))
                    .unwrap();
                drop(lines);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers catch up
                return Err(format!("daemon exited ({status}):\n{}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("timed out:\n{}", self.log()));
            }
        }
    }

    /// Waits until the daemon exits by itself (a crash); its exit code, or -1 for a signal.
    // Only the cluster tests use it, and the process-isolation suite leaves them out.
    #[allow(dead_code)]
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn stop(mut self) -> i32 {
        self.terminate()
    }

    /// Kills the daemon with SIGKILL, as a crash or the OOM killer would, and waits until it is
    /// gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> i32 {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
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

/// `orgloop.yaml` for a module named `name` using the example plugins listed.
pub fn project_yaml(name: &str, plugins: &[&str], extra: &str) -> String {
    let mut y = format!(
        "apiVersion: orgloop/v1alpha1\nkind: Project\nmetadata:\n  name: {name}\nplugins:\n"
    );
    for p in plugins {
        y.push_str(&format!(
            "  - name: {p}\n    path: ${{PLUGIN_DIR}}/liborgloop_{p}.so\n    version: \"^0.1\"\n"
        ));
    }
    y.push_str(extra);
    y
}

/// Asserts that `haystack` contains `needle`, printing both when not.
#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected to find:\n  {needle}\nin:\n{haystack}"
    );
}

/// Builds a copy of example plugin `name` with its version set to `version`, as a user would after
/// bumping `Cargo.toml`; returns the library's path. The copy is its own crate (so both builds can
/// exist at once) and shares the workspace's target directory and lock file (so only the plugin
/// itself is compiled).
pub fn build_variant(name: &str, version: &str) -> PathBuf {
    static BUILDS: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut builds = BUILDS.get_or_init(Default::default).lock().unwrap();
    let key = format!("{name}-{version}");
    if let Some(p) = builds.get(&key) {
        return p.clone();
    }
    build_dir();
    let root = workspace();
    let crate_name = format!("orgloop-{name}-v{}", version.replace('.', "_"));
    let dir = target_dir().join("e2e-variants").join(&crate_name);
    let _ = std::fs::remove_dir_all(&dir);
    copy_tree(
        &root.join("example-plugins").join(name).join("src"),
        &dir.join("src"),
    );
    let manifest =
        std::fs::read_to_string(root.join("example-plugins").join(name).join("Cargo.toml"))
            .unwrap();
    let workspace_manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let profiles = &workspace_manifest[workspace_manifest
        .find("[profile.")
        .unwrap_or(workspace_manifest.len())..];
    let manifest = manifest
        .replace(
            &format!("name = \"orgloop-{name}\""),
            &format!("name = \"{crate_name}\""),
        )
        .replace(
            "version.workspace = true",
            &format!("version = \"{version}\""),
        )
        .replace("edition.workspace = true", "edition = \"2021\"")
        .replace("license.workspace = true", "license = \"Apache-2.0\"")
        .replace(
            "orgloop-plugin-sdk.workspace = true",
            &format!(
                "orgloop-plugin-sdk = {{ path = {:?} }}",
                root.join("plugin-sdk").display().to_string()
            ),
        )
        .replace(
            "serde.workspace = true",
            "serde = { version = \"1\", features = [\"derive\"] }",
        )
        .replace("serde_json.workspace = true", "serde_json = \"1\"");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("{manifest}\n[workspace]\n\n{profiles}"),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["build", "--lib", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "building {crate_name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = build_dir().join(format!("lib{}.so", crate_name.replace('-', "_")));
    assert!(lib.is_file(), "{} was not built", lib.display());
    builds.insert(key, lib.clone());
    lib
}

/// Copies the directory tree `from` to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
