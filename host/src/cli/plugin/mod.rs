//! `orgloop plugin new <name> --kind transform|actor|source [--sdk-path DIR] [--dir DIR]`: starts a
//! plugin crate that builds as a `cdylib` and whose own unit test passes as it is, with a README
//! and the lines of YAML that load it into a module.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::exit;

#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new plugin crate.
    New(NewArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name: lower-case letters, digits, `-` or `_`, starting with a letter. It is
    /// the crate's name, the plugin's name in YAML and the symbol's.
    pub name: String,
    /// What the plugin offers.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// Depend on the SDK at this path instead of by version (as a checkout of orgloop has it).
    #[arg(long)]
    pub sdk_path: Option<PathBuf>,
    /// Where to create the crate's directory.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Transform,
    Actor,
    Source,
}

pub fn run(args: PluginArgs) -> ExitCode {
    let PluginCommand::New(new) = args.command;
    match write(&new) {
        Ok(dir) => {
            println!(
                "✓ plugin {} ({:?}) in {}",
                new.name,
                new.kind,
                dir.display()
            );
            println!("  cargo test --manifest-path {}/Cargo.toml", dir.display());
            println!(
                "  then see {}/README.md to load it into a module",
                dir.display()
            );
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn write(args: &NewArgs) -> Result<PathBuf, String> {
    let name = &args.name;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not a plugin name: use lower-case letters, digits, '-' or '_', starting with a letter"
        ));
    }
    let dir = args.dir.join(name);
    if dir.exists() {
        return Err(format!("{} exists already", dir.display()));
    }
    let sdk = match &args.sdk_path {
        Some(path) => {
            let path = path
                .canonicalize()
                .map_err(|e| format!("--sdk-path {}: {e}", path.display()))?;
            format!("{{ path = {:?} }}", path.display().to_string())
        }
        None => format!("\"{}\"", env!("CARGO_PKG_VERSION")),
    };
    let (template, kind, yaml) = match args.kind {
        Kind::Transform => (
            include_str!("transform.rs.tmpl"),
            "transform",
            format!("# transforms/transforms.yaml\ntransforms:\n  - name: {name}\n    type: plugin\n    symbol: {name}::{name}\n    config: {{ drop_kinds: [noise] }}\n"),
        ),
        Kind::Actor => (
            include_str!("actor.rs.tmpl"),
            "actor",
            format!("# connectors/*.yaml\nactors:\n  - id: {name}\n    connector: {name}::{name}\n    config: {{ prefix: \"> \" }}\n"),
        ),
        Kind::Source => (
            include_str!("source.rs.tmpl"),
            "source",
            format!("# connectors/*.yaml\nsources:\n  - id: {name}\n    connector: {name}::{name}\n    poll: {{ interval: 30s }}\n"),
        ),
    };
    let lib_name = name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", fill(template, name)),
        ("module.yaml", format!("# orgloop.yaml\nplugins:\n  - name: {name}\n    path: {}/target/release/lib{lib_name}.so\n    version: \"^0.1\"\n\n{yaml}", dir.display())),
        ("README.md", readme(name, kind, &lib_name)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (rel, content) in files {
        let path = dir.join(rel);
        create(&path, &content).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(dir)
}

fn create(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content)
}

/// The template with the plugin's names filled in: `{{name}}` and `{{symbol}}` (as written), and
/// `{{Type}}` (the name in CamelCase).
fn fill(template: &str, name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    template
        .replace("{{name}}", name)
        .replace("{{symbol}}", name)
        .replace("{{Type}}", &camel)
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         # A cdylib for the daemon to load, an rlib for the unit tests.\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
         [dependencies]\norgloop-plugin-sdk = {sdk}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
         # No debug info: the daemon hashes and copies every build it loads.\n[profile.release]\ndebug = false\n\n\
         # A crate of its own, even inside another workspace.\n[workspace]\n"
    )
}

fn readme(name: &str, kind: &str, lib_name: &str) -> String {
    format!(
        "# {name}\n\nAn orgloop plugin with one {kind}, `{name}::{name}`.\n\n\
         ```sh\ncargo test            # the unit test, in process (orgloop_plugin_sdk::testing::TestHost)\n\
         cargo build --release # target/release/lib{lib_name}.so, for the daemon\n```\n\n\
         `module.yaml` has the lines that load it into a module. After each build, `orgloop module \
         reload <module>` (or `orgloop start --watch`) swaps the new version in without a restart.\n\n\
         A plugin must not start threads or keep a runtime of its own, use `thread_local!` with a \
         destructor, write to stdout, or keep state in globals: use the `Host` it is given for \
         logging, time, sleeping, HTTP and emitting events (see the SDK's documentation).\n"
    )
}
