//! The plugin loader, in process: two builds of one plugin side by side, verified unload, and the
//! libraries it must refuse.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orgloop::config::spec::{Isolation, PluginSpec};
use orgloop::plugin::http_client::HttpClient;
use orgloop::plugin::services::Services;
use orgloop::plugin::store::PluginStore;
use orgloop::plugin::verify::is_mapped;
use orgloop::plugin::{Loader, PluginLoadError, UnloadReport};
use orgloop_plugin_sdk::{Event, EventType, TransformCtx, Verdict};

use crate::harness::*;

fn services() -> Services {
    Services {
        module: Arc::from("m"),
        object: "test".into(),
        source: None,
        emitter: Arc::new(|_| Ok(())),
        http: HttpClient::default(),
        log_to: None,
    }
}

/// A `plugins:` entry for the build at `path`, loaded in the daemon's process.
fn entry(path: &Path) -> PluginSpec {
    PluginSpec::for_library("filters", path, Isolation::InProcess)
}

fn bot_event() -> Event {
    Event::builder("gh", EventType::ResourceChanged)
        .provenance("author_type", "bot")
        .build()
}

const CTX: TransformCtx<'static> = TransformCtx {
    source: "gh",
    route: "r",
    actor: "a",
    module: "m",
};
const DROP_BOTS: &str = r#"{"exclude": {"provenance.author_type": "bot"}}"#;

#[test]
fn two_builds_of_one_plugin_run_side_by_side_and_the_old_one_unloads() {
    let dir = test_dir("loader_side_by_side");
    let loader = Loader::new(PluginStore::new(dir.join("store")));
    let v1 = loader.load("m", &entry(&plugin("filters"))).unwrap();
    let v2 = loader
        .load("m", &entry(&build_variant("filters", "0.2.0")))
        .unwrap();
    assert_eq!(
        (v1.manifest().name.as_str(), v1.manifest().version.as_str()),
        ("filters", "0.1.0")
    );
    assert_eq!(
        (v2.manifest().name.as_str(), v2.manifest().version.as_str()),
        ("filters", "0.2.0")
    );
    assert_ne!(v1.hash(), v2.hash());
    assert_ne!(v1.path(), v2.path(), "each build gets its own private copy");
    assert!(
        is_mapped(v1.path()) && is_mapped(v2.path()),
        "both builds are mapped at once"
    );

    let t1 = v1.new_transform("filter", DROP_BOTS, services()).unwrap();
    let t2 = v2.new_transform("filter", DROP_BOTS, services()).unwrap();
    assert_eq!(
        t1.apply(&bot_event(), &CTX, Duration::from_secs(5)),
        Ok(Verdict::Drop)
    );
    assert_eq!(
        t2.apply(&bot_event(), &CTX, Duration::from_secs(5)),
        Ok(Verdict::Drop)
    );

    let report: Arc<Mutex<Option<UnloadReport>>> = Arc::default();
    let r = report.clone();
    v1.on_unload(move |rep| *r.lock().unwrap() = Some(rep.clone()));
    let old_path = v1.path().to_path_buf();
    drop(v1);
    assert!(
        is_mapped(&old_path),
        "the transform still holds the old library"
    );
    drop(t1);
    // Closed a moment after its last user let go (no plugin code may still be on a stack).
    let deadline = std::time::Instant::now() + WAIT;
    while report.lock().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(*report.lock().unwrap(), Some(UnloadReport::Unloaded));
    assert!(
        !is_mapped(&old_path),
        "the old build is gone from /proc/self/maps"
    );
    assert!(!old_path.exists(), "its private copy is deleted");

    assert_eq!(
        t2.apply(&bot_event(), &CTX, Duration::from_secs(5)),
        Ok(Verdict::Drop),
        "the new build still serves"
    );
}

#[test]
fn the_same_build_is_loaded_once() {
    let dir = test_dir("loader_same_build");
    let loader = Loader::new(PluginStore::new(dir.join("store")));
    let a = loader.load("m", &entry(&plugin("filters"))).unwrap();
    let b = loader.load("m", &entry(&plugin("filters"))).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn a_plugin_built_against_another_abi_is_refused_clearly() {
    let dir = test_dir("loader_abi");
    let loader = Loader::new(PluginStore::new(dir.join("store")));
    let fixture = build_dir().join("liborgloop_fixture_abi_mismatch.so");
    let err = loader
        .load("m", &entry(&fixture))
        .err()
        .expect("must be refused");
    assert_eq!(
        err,
        PluginLoadError::AbiMismatch {
            found: 999,
            sdk: [9, 0, 0]
        }
    );
    let text = err.to_string();
    assert_contains(&text, "orgloop-plugin-sdk 9.0.0 (ABI v999)");
    assert_contains(&text, "rebuild the plugin");
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let dir = test_dir("loader_bad_files");
    let loader = Loader::new(PluginStore::new(dir.join("store")));
    let bytes = std::fs::read(plugin("filters")).unwrap();
    let half = dir.join("half.so");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let err = loader
        .load("m", &entry(&half))
        .err()
        .expect("a cut file is refused");
    assert_contains(&err.to_string(), "incomplete library file");
    let text = dir.join("text.so");
    std::fs::write(&text, "not a library").unwrap();
    assert_contains(
        &loader.load("m", &entry(&text)).err().unwrap().to_string(),
        "no ELF header",
    );
    let missing = loader
        .load("m", &entry(&dir.join("missing.so")))
        .err()
        .unwrap();
    assert!(matches!(missing, PluginLoadError::Io(_)), "{missing:?}");
}
