//! The images the real-node tests run are the shipped images: assembled from the Dockerfiles'
//! final stages (user, entrypoint, ports, labels, files) and this checkout's release binaries.
//! Their configuration is read back from the archive, and each binary is started in the image's
//! own filesystem as the image's user, which shows that the stand-in for the distroless base holds
//! what the binary needs. (Skipped, with a note, while the release binaries are not built, and the
//! run in the image's filesystem when not root.)

use std::path::Path;
use std::process::Command;

use aoai_e2e::image;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The archive's image configuration and its layers unpacked into `rootfs`.
fn unpack(archive: &Path, rootfs: &Path) -> serde_json::Value {
    let mut outer = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let dir = tempfile::tempdir().unwrap();
    outer.unpack(dir.path()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(manifest[0]["Config"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let mut inner = tar::Archive::new(
            std::fs::File::open(dir.path().join(layer.as_str().unwrap())).unwrap(),
        );
        inner.set_preserve_permissions(true);
        inner.unpack(rootfs).unwrap();
    }
    config
}

#[test]
fn the_test_images_are_the_dockerfiles_final_stages() {
    for (dockerfile, binary, ports, version) in [
        (
            "Dockerfile.proxy",
            "aoai-proxy",
            ["8080/tcp", "8081/tcp"],
            "aoai-proxy 0.1.0",
        ),
        (
            "Dockerfile.operator",
            "aoai-operator",
            ["8080/tcp", "9443/tcp"],
            "aoai-operator 0.1.0",
        ),
    ] {
        let text = std::fs::read_to_string(root().join(dockerfile)).unwrap();
        let stage = image::final_stage(&text).unwrap();
        // What the README and the chart promise of the images.
        assert_eq!(stage.base, "${RUNTIME_IMAGE}", "{dockerfile}");
        assert!(text.contains("ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot"));
        assert!(
            !text.contains("# syntax="),
            "{dockerfile}: a syntax line makes BuildKit fetch its frontend from a registry"
        );
        assert_eq!(stage.user, "65532:65532", "{dockerfile}");
        let installed = format!("/usr/local/bin/{binary}");
        assert_eq!(
            stage.entrypoint,
            std::slice::from_ref(&installed),
            "{dockerfile}"
        );
        assert_eq!(stage.copies.len(), 1, "{dockerfile}");
        assert_eq!(stage.copies[0].1, installed, "{dockerfile}");

        let built = root().join(stage.copies[0].0.trim_start_matches("/src/"));
        if !built.is_file() {
            println!(
                "skipped the image of {dockerfile}: {} is not built (scripts/test builds it for the node tests)",
                built.display()
            );
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("image.tar");
        image::from_dockerfile(
            dockerfile,
            &format!("registry.local/{binary}:e2e"),
            &archive,
        );
        let rootfs = dir.path().join("rootfs");
        let config = unpack(&archive, &rootfs);
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([installed])
        );
        let exposed: Vec<&str> = config["config"]["ExposedPorts"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(exposed, ports, "{dockerfile}");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.title"], binary,
            "{dockerfile}"
        );
        assert!(rootfs.join(installed.trim_start_matches('/')).is_file());

        let root_user = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
        if !root_user {
            println!("skipped running {binary} in its image's filesystem: not root (chroot)");
            continue;
        }
        let output = Command::new("chroot")
            .args([
                "--userspec=65532:65532",
                &rootfs.display().to_string(),
                &installed,
                "--version",
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{binary} does not start in its image: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), version);
    }
}
