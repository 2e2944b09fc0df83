//! A volume archive restored into a directory: whatever the archive says (`..`, absolute
//! paths, links pointing out, links then files through them), nothing lands outside the
//! target.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use homeplane_backups::archive::{UnpackOptions, unpack};
use libfuzzer_sys::fuzz_target;

fn sandbox() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("homeplane-fuzz-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let sandbox = sandbox();
    let target = sandbox.join("target");
    let _ = unpack(data, &target, UnpackOptions::default());
    let outside: Vec<String> = std::fs::read_dir(sandbox)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name != "target")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        outside.is_empty(),
        "written outside the target: {outside:?}"
    );
    let _ = std::fs::remove_dir_all(&target);
    if target.exists() {
        // A directory made read-only by the archive: make it writable, then remove it.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwx"])
            .arg(&target)
            .status();
        let _ = std::fs::remove_dir_all(&target);
    }
});
