//! The release builds a benchmark runs against: `target/release/orgloop`, the example plugins,
//! and a second build of the http plugin for the reload benchmark. Built here when missing, so
//! every benchmark is one command; never a debug build, whose numbers would mean nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The packages the daemon benchmarks need.
const PACKAGES: [&str; 4] = [
    "orgloop",
    "orgloop-filters",
    "orgloop-http",
    "orgloop-agent",
];

pub struct Artifacts {
    pub workspace: PathBuf,
    pub target: PathBuf,
}

impl Artifacts {
    /// The workspace this tool was built in, and its target directory (`CARGO_TARGET_DIR` wins).
    pub fn locate() -> Artifacts {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace.join("target"), PathBuf::from);
        Artifacts { workspace, target }
    }

    pub fn release(&self) -> PathBuf {
        self.target.join("release")
    }

    pub fn orgloop(&self) -> PathBuf {
        self.release().join("orgloop")
    }

    /// The release build of example plugin `name` (`filters`, `http`, `agent`).
    pub fn plugin(&self, name: &str) -> PathBuf {
        self.release().join(format!("liborgloop_{name}.so"))
    }

    /// Builds the daemon and plugins in release mode when one is missing (or always, with
    /// `rebuild`), with cargo's output passed through to stderr.
    pub fn ensure_built(&self, rebuild: bool) -> Result<(), String> {
        let missing = !self.orgloop().is_file()
            || ["filters", "http", "agent"]
                .iter()
                .any(|p| !self.plugin(p).is_file());
        if !missing && !rebuild {
            return Ok(());
        }
        eprintln!("building the release daemon and plugins ...");
        let mut cmd = Command::new(cargo());
        cmd.args(["build", "--release"])
            .current_dir(&self.workspace);
        for p in PACKAGES {
            cmd.args(["-p", p]);
        }
        run(cmd, "cargo build --release")
    }

    /// A build of the http plugin with its version set to `version`, as a user would make after
    /// bumping `Cargo.toml` (the same recipe as `build_variant` in tests/e2e/harness.rs, in
    /// release mode): a copy of the crate with its own `[workspace]`, sharing this target
    /// directory and lock file so only the plugin itself is compiled. Rebuilt when the plugin's
    /// sources are newer than the library.
    pub fn http_variant(&self, version: &str) -> Result<PathBuf, String> {
        let crate_name = format!("orgloop-http-v{}", version.replace('.', "_"));
        let lib = self
            .release()
            .join(format!("lib{}.so", crate_name.replace('-', "_")));
        let src = self.workspace.join("example-plugins").join("http");
        if lib.is_file()
            && newest(&src) <= modified(&lib)
            && newest(&self.workspace.join("plugin-sdk")) <= modified(&lib)
        {
            return Ok(lib);
        }
        let dir = self
            .target
            .join("orgloop-load")
            .join("variants")
            .join(&crate_name);
        let _ = std::fs::remove_dir_all(&dir);
        copy_tree(&src.join("src"), &dir.join("src"))
            .map_err(|e| format!("copying the http plugin: {e}"))?;
        let manifest =
            std::fs::read_to_string(src.join("Cargo.toml")).map_err(|e| e.to_string())?;
        let root = std::fs::read_to_string(self.workspace.join("Cargo.toml"))
            .map_err(|e| e.to_string())?;
        let profiles = &root[root.find("[profile.").unwrap_or(root.len())..];
        let manifest = manifest
            .replace(
                "name = \"orgloop-http\"",
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
                    self.workspace.join("plugin-sdk").display().to_string()
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
        .map_err(|e| e.to_string())?;
        std::fs::copy(self.workspace.join("Cargo.lock"), dir.join("Cargo.lock"))
            .map_err(|e| e.to_string())?;
        eprintln!("building http plugin {version} for the reload benchmark ...");
        let mut cmd = Command::new(cargo());
        cmd.args(["build", "--release", "--lib", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &self.target);
        run(cmd, "cargo build of the http variant")?;
        if !lib.is_file() {
            return Err(format!("{} was not built", lib.display()));
        }
        Ok(lib)
    }

    /// When the daemon binary was built, to print beside the numbers (a stale binary is the
    /// easiest way to benchmark the wrong code).
    pub fn built_at(&self) -> String {
        let age = SystemTime::now()
            .duration_since(modified(&self.orgloop()))
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("{} (built {} min ago)", self.orgloop().display(), age / 60)
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The newest modification time of any file under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut newest = modified(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            newest = newest.max(if path.is_dir() {
                self::newest(&path)
            } else {
                modified(&path)
            });
        }
    }
    newest
}

/// Copies the directory tree `from` to `to`.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)?.flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
