//! The real daemon: `target/release/orgloop start <module> --port <p>` as a child process with its
//! own `ORGLOOP_HOME`, its port read from its "listening on http://127.0.0.1:PORT" log line and
//! its control token from `$ORGLOOP_HOME/control/<port>.token`. Stopped with SIGTERM (so it
//! removes its plugin copies) when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many of the daemon's last log lines are kept, to show when something goes wrong.
const TAIL: usize = 200;

#[derive(Default)]
struct Log {
    tail: std::collections::VecDeque<String>,
    /// The first "listening on" line.
    listening: Option<String>,
    warnings: u64,
}

pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub home: PathBuf,
    log: Arc<(Mutex<Log>, Condvar)>,
}

impl Daemon {
    /// Spawns the daemon on `port` (0: a free one) without waiting for it.
    pub fn spawn(
        bin: &Path,
        modules: &[&Path],
        port: u16,
        home: &Path,
        env: &[(&str, String)],
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new(bin);
        cmd.arg("start")
            .args(modules)
            .args(["--port", &port.to_string()])
            .env("ORGLOOP_HOME", home)
            .env("ORGLOOP_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for stream in streams {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let line = strip_ansi(&line);
                    let mut l = log.0.lock().unwrap_or_else(|e| e.into_inner());
                    if l.listening.is_none() && line.contains("listening on http://127.0.0.1:") {
                        l.listening = Some(line.clone());
                        log.1.notify_all();
                    }
                    l.warnings += u64::from(line.contains(" WARN ") || line.contains(" ERROR "));
                    if l.tail.len() == TAIL {
                        l.tail.pop_front();
                    }
                    l.tail.push_back(line);
                }
            });
        }
        Ok(Daemon {
            pid: child.id(),
            child,
            port,
            home: home.to_path_buf(),
            log,
        })
    }

    /// Spawns the daemon on a free port and waits until it listens.
    /// `--daemon-env` pairs as [`start`](Self::start) takes them.
    pub fn env(pairs: &[(String, String)]) -> Vec<(&str, String)> {
        pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
    }

    pub fn start(
        bin: &Path,
        modules: &[&Path],
        home: &Path,
        env: &[(&str, String)],
    ) -> Result<Daemon, String> {
        let mut d = Daemon::spawn(bin, modules, 0, home, env)?;
        d.wait_listening(Duration::from_secs(30))?;
        Ok(d)
    }

    /// Waits for the "listening on" line; sets and returns the port.
    pub fn wait_listening(&mut self, timeout: Duration) -> Result<u16, String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let l = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(line) = &l.listening {
                    let port: String = line
                        .split("http://127.0.0.1:")
                        .nth(1)
                        .unwrap_or_default()
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    self.port = port.parse().map_err(|_| format!("no port in {line:?}"))?;
                    return Ok(self.port);
                }
                let _ = self.log.1.wait_timeout(l, Duration::from_millis(20));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers catch up
                return Err(format!("the daemon exited ({status}):\n{}", self.tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the daemon did not listen within {timeout:?}:\n{}",
                    self.tail()
                ));
            }
        }
    }

    /// "startup_ms=N" from the daemon's own "listening" line: its view of its startup.
    pub fn reported_startup_ms(&self) -> Option<f64> {
        let l = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        let line = l.listening.as_ref()?;
        let rest = line.split("startup_ms=").nth(1)?;
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    }

    /// The control API's bearer token.
    pub fn token(&self) -> Result<String, String> {
        let path = self
            .home
            .join("control")
            .join(format!("{}.token", self.port));
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("cannot read the control token {}: {e}", path.display()))
    }

    /// Warning and error lines the daemon printed so far (failed deliveries, mostly).
    pub fn warnings(&self) -> u64 {
        self.log
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .warnings
    }

    /// The last lines the daemon printed.
    pub fn tail(&self) -> String {
        self.last_lines(TAIL).join("\n")
    }

    /// The last `n` lines the daemon printed (at most the [`TAIL`] kept), oldest first.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let l = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        l.tail
            .iter()
            .skip(l.tail.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// How the daemon ended, if it did (a crash under load is a result too).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// SIGKILL, and waits for the exit: a crash, with no drain and no cleanup (the next start
    /// with the same home removes the dead run's plugin copies).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to 15 s, then SIGKILL) for the exit.
    pub fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SIGTERM through kill(1): the daemon then drains and removes its plugin copies.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
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
