//! The container images (deploy/images/*.Dockerfile, built by `make images`
//! into OCI layouts under .ladder/images/) and the one version they share.
//!
//! - every place that names a version or an image agrees with the workspace
//!   version: the chart's appVersion, the CRD's default app image, the
//!   Dockerfiles' VERSION;
//! - each image unpacks (with umoci, as a runtime would) to a root filesystem
//!   holding exactly the files its Dockerfile's final stage copies (no shell),
//!   its config runs as a non-root user with the Dockerfile's entrypoint and
//!   OCI labels, and its entrypoint runs from that root filesystem alone
//!   (`chroot` as the image's user): `--help`, and the app's `serve` answering
//!   /healthz on loopback.
//!
//! The image test needs root (chroot, and umoci keeps file owners) and
//! `make images` first; it fails with that instruction otherwise.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ladder_e2e::repo_root;

const NAMES: [&str; 2] = ["ladder-operator", "ladder-app"];
const REGISTRY: &str = "ghcr.io/ladder-dev";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// `[workspace.package] version` of Cargo.toml.
fn workspace_version() -> String {
    let manifest = read("Cargo.toml");
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(v) = line.strip_prefix("version") {
            return v
                .trim_start_matches([' ', '='])
                .trim_matches('"')
                .to_owned();
        }
    }
    panic!("no version in Cargo.toml's [workspace.package]");
}

fn yaml_field(path: &str, key: &str) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read(path)).expect("yaml");
    let mut v = &doc;
    for k in key.split('.') {
        v = &v[k];
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{path}: {key} is not a string"))
        .to_owned()
}

/// The lines of a Dockerfile's final stage (after its last FROM).
fn final_stage(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", "");
    let lines: Vec<&str> = joined.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    lines[from + 1..]
        .iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn every_version_and_image_name_comes_from_the_workspace_version() {
    let version = workspace_version();
    assert_eq!(
        yaml_field("charts/ladder-operator/Chart.yaml", "appVersion"),
        version,
        "charts/ladder-operator/Chart.yaml appVersion"
    );
    assert_eq!(
        yaml_field(
            "charts/ladder-operator/charts/ladder-crds/Chart.yaml",
            "appVersion"
        ),
        version,
        "ladder-crds appVersion"
    );
    assert_eq!(
        yaml_field("charts/ladder-operator/values.yaml", "image.repository"),
        format!("{REGISTRY}/ladder-operator"),
    );
    assert_eq!(
        yaml_field("charts/ladder-operator/values.yaml", "image.tag"),
        "",
        "the chart's image tag must default to appVersion, not pin its own"
    );
    assert_eq!(
        ladder_crds::scalingphase::DEFAULT_APP_IMAGE,
        format!("{REGISTRY}/ladder-app:{version}"),
        "crds/src/scalingphase.rs DEFAULT_APP_IMAGE"
    );
    for name in NAMES {
        let dockerfile = read(&format!("deploy/images/{name}.Dockerfile"));
        assert!(
            dockerfile
                .lines()
                .any(|l| l == format!("ARG VERSION={version}")),
            "deploy/images/{name}.Dockerfile must say ARG VERSION={version}"
        );
        let stage = final_stage(&dockerfile);
        for want in [
            format!("LABEL org.opencontainers.image.title=\"{name}\""),
            "LABEL org.opencontainers.image.version=\"${VERSION}\"".to_owned(),
            format!("ENTRYPOINT [\"/{name}\"]"),
        ] {
            assert!(
                stage.contains(&want),
                "{name}.Dockerfile's final stage lacks `{want}`"
            );
        }
        assert!(
            stage.iter().any(|l| l.starts_with("USER ")
                && !l.starts_with("USER 0")
                && !l.starts_with("USER root")),
            "{name} must run as a non-root user"
        );
    }
}

struct Unpacked {
    dir: PathBuf,
}

impl Unpacked {
    fn rootfs(&self) -> PathBuf {
        self.dir.join("bundle/rootfs")
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn layout(name: &str) -> PathBuf {
    let dir = repo_root().join(".ladder/images").join(name);
    assert!(
        dir.join("index.json").is_file(),
        "{} has no OCI layout: run `make images` first",
        dir.display()
    );
    dir
}

fn unpack(name: &str, version: &str) -> Unpacked {
    let dir =
        std::env::temp_dir().join(format!("ladder-image-{name}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{version}", layout(name).display()))
        .arg(dir.join("bundle"))
        .output()
        .expect("umoci (hack/toolchain.sh installs it)");
    assert!(
        out.status.success(),
        "umoci unpack {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Unpacked { dir }
}

/// The image's config blob (labels, user, entrypoint) via index → manifest.
fn image_config(name: &str) -> serde_json::Value {
    let dir = layout(name);
    let blob = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).expect("blob"))
            .expect("json blob")
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index"))
            .expect("json");
    let manifest = blob(
        index["manifests"][0]["digest"]
            .as_str()
            .expect("manifest digest"),
    );
    blob(
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    )
}

fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry.file_type().expect("type").is_dir() {
                stack.push(path);
            } else {
                out.push(format!(
                    "/{}",
                    path.strip_prefix(root).expect("under root").display()
                ));
            }
        }
    }
    out.sort();
    out
}

fn blobs_size(name: &str) -> u64 {
    std::fs::read_dir(layout(name).join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum()
}

fn chroot(rootfs: &Path, user: &str, args: &[&str]) -> Command {
    // Absolute: the environment is cleared below (nothing from the host leaks in).
    let mut cmd = Command::new("/usr/sbin/chroot");
    cmd.arg(format!("--userspec={user}"))
        .arg(rootfs)
        .args(args)
        .env_clear();
    cmd
}

fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
fn each_image_runs_its_entrypoint_from_its_own_root_filesystem() {
    let version = workspace_version();
    let mut sizes = Vec::new();
    for name in NAMES {
        let dockerfile = read(&format!("deploy/images/{name}.Dockerfile"));
        let stage = final_stage(&dockerfile);

        // The config says what the Dockerfile says.
        let config = image_config(name);
        let user = stage
            .iter()
            .find_map(|l| l.strip_prefix("USER "))
            .expect("USER");
        assert_eq!(config["config"]["User"], user, "{name}: user");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([format!("/{name}")]),
            "{name}: entrypoint"
        );
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], version.as_str());
        assert_eq!(labels["org.opencontainers.image.title"], name);
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/ladder-dev/ladder"
        );

        // The root filesystem holds what the final stage copies, nothing else.
        let image = unpack(name, &version);
        let rootfs = image.rootfs();
        let mut copied: Vec<String> = stage
            .iter()
            .filter_map(|l| l.strip_prefix("COPY "))
            .map(|l| l.split_whitespace().last().expect("COPY dest").to_owned())
            .collect();
        copied.sort();
        assert_eq!(files_under(&rootfs), copied, "{name}: files of the image");
        assert!(!rootfs.join("bin/sh").exists(), "{name}: no shell");

        // Its entrypoint runs there, as the image's user, with nothing from the host.
        let out = chroot(&rootfs, user, &[&format!("/{name}"), "--help"])
            .output()
            .expect("chroot (run the image test as root)");
        assert!(
            out.status.success(),
            "{name} --help in its rootfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{name} --help printed no usage"
        );
        let size = blobs_size(name);
        eprintln!(
            "{name}:{version}: {} KiB compressed (OCI blobs)",
            size / 1024
        );
        sizes.push((name, size));
    }

    // The app serves /healthz from its rootfs (in-memory SQLite: the rootfs is read-only in practice).
    let app = unpack("ladder-app", &version);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut child = chroot(&app.rootfs(), "65532:65532", &["/ladder-app", "serve"])
        .env("LADDER_LISTEN", &addr)
        .env("LADDER_STORE", "sqlite::memory:")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ladder-app in its rootfs");
    let start = Instant::now();
    let answer = loop {
        match http_get(&addr, "/healthz") {
            Ok(body) => break Some(body),
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let out = child.wait_with_output().expect("app output");
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "ladder-app serve from its rootfs never answered on {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "/healthz from the image's app: {answer}"
    );
    // A static binary on scratch stays small; a dynamic one or a base image would not.
    for (name, size) in sizes {
        assert!(
            size < 64 * 1024 * 1024,
            "{name} image is {size} bytes: more than a static binary should need"
        );
    }
}
