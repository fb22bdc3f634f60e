//! Container images for the real-node tests, assembled from the binaries this checkout built and
//! the final stage of the project's Dockerfiles. There is no Docker engine and no registry here,
//! so the final stage is read instead of run: its `COPY --from=build` files, `USER`, `EXPOSE`,
//! `ENTRYPOINT`, `CMD` and `LABEL`s become the image's files and configuration, and an
//! instruction this reader does not know is an error (the test image would differ from the
//! shipped one). The stage's base, distroless `cc-debian12:nonroot`, is stood in for by what it
//! gives these binaries: the glibc and libgcc they link (taken from this Debian 12 machine, the
//! same release), the CA bundle, `/etc/passwd` with user `nonroot` (65532) and a `/tmp`.
//!
//! The result is a `docker save` archive that `ctr images import` takes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ring::digest::{SHA256, digest};
use serde_json::json;

/// What the final stage of a Dockerfile makes of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalStage {
    /// The `FROM` image.
    pub base: String,
    /// `COPY --from=build SOURCE DESTINATION`, the source as the build stage's path.
    pub copies: Vec<(String, String)>,
    pub user: String,
    pub exposed: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The final stage of `dockerfile` (its text), or the instruction that cannot be read.
pub fn final_stage(dockerfile: &str) -> Result<FinalStage, String> {
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from = instructions
        .iter()
        .rposition(|l| keyword(l) == "FROM")
        .ok_or("no FROM")?;
    let mut stage = FinalStage {
        base: argument(instructions[from])
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        copies: Vec::new(),
        user: "0".into(),
        exposed: Vec::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        labels: BTreeMap::new(),
    };
    for line in &instructions[from + 1..] {
        let argument = argument(line);
        match keyword(line).as_str() {
            "COPY" => {
                let words: Vec<&str> = argument.split_whitespace().collect();
                match words.as_slice() {
                    [from, source, destination] if from.starts_with("--from=") => {
                        stage
                            .copies
                            .push((source.to_string(), destination.to_string()));
                    }
                    _ => return Err(format!("cannot read {line:?}")),
                }
            }
            "USER" => stage.user = argument.to_string(),
            "EXPOSE" => stage
                .exposed
                .extend(argument.split_whitespace().map(String::from)),
            "ENTRYPOINT" => stage.entrypoint = exec_form(line, argument)?,
            "CMD" => stage.cmd = exec_form(line, argument)?,
            "LABEL" => stage.labels.extend(labels(argument)?),
            other => {
                return Err(format!(
                    "the final stage's {other} is not read here: {line:?}"
                ));
            }
        }
    }
    Ok(stage)
}

fn keyword(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

fn argument(line: &str) -> &str {
    line.split_once(char::is_whitespace)
        .map_or("", |(_, rest)| rest.trim())
}

fn exec_form(line: &str, argument: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(argument).map_err(|_| format!("not in exec form: {line:?}"))
}

/// `key="value" key2="value 2"` pairs.
fn labels(mut text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    while !text.is_empty() {
        let (key, rest) = text
            .split_once("=\"")
            .ok_or_else(|| format!("cannot read LABEL {text:?}"))?;
        let (value, rest) = rest
            .split_once('"')
            .ok_or_else(|| format!("cannot read LABEL {text:?}"))?;
        pairs.push((key.trim().to_string(), value.to_string()));
        text = rest.trim();
    }
    Ok(pairs)
}

/// A file to put in an image: its path there, its content, its mode.
struct Entry {
    path: String,
    content: Option<Vec<u8>>,
    mode: u32,
    owner: u64,
}

impl Entry {
    fn dir(path: &str, mode: u32, owner: u64) -> Self {
        Self {
            path: path.into(),
            content: None,
            mode,
            owner,
        }
    }

    fn file(path: &str, content: Vec<u8>, mode: u32) -> Self {
        Self {
            path: path.into(),
            content: Some(content),
            mode,
            owner: 0,
        }
    }
}

fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.owner);
        header.set_gid(entry.owner);
        header.set_mtime(0);
        let path = entry.path.trim_start_matches('/');
        match &entry.content {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .expect("append a directory");
            }
            Some(content) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(content.len() as u64);
                builder
                    .append_data(&mut header, path, content.as_slice())
                    .expect("append a file");
            }
        }
    }
    builder.into_inner().expect("finish a layer")
}

/// The shared libraries `binary` loads, as `ldd` finds them: (path in the image, file here).
fn libraries(binary: &Path) -> Vec<(String, PathBuf)> {
    let output = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
            found.push((path.to_string(), real));
        }
    }
    found
}

/// What distroless `cc-debian12:nonroot` gives the binaries `binaries`.
fn base_layer(binaries: &[PathBuf]) -> Vec<u8> {
    let mut entries = vec![
        Entry::dir("etc", 0o755, 0),
        Entry::dir("etc/ssl", 0o755, 0),
        Entry::dir("etc/ssl/certs", 0o755, 0),
        Entry::dir("tmp", 0o1777, 0),
        Entry::dir("home", 0o755, 0),
        Entry::dir("home/nonroot", 0o700, 65532),
        Entry::dir("usr", 0o755, 0),
        Entry::dir("usr/local", 0o755, 0),
        Entry::dir("usr/local/bin", 0o755, 0),
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n".to_vec(),
            0o644,
        ),
        Entry::file(
            "etc/group",
            b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n".to_vec(),
            0o644,
        ),
        Entry::file(
            "etc/ssl/certs/ca-certificates.crt",
            std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default(),
            0o644,
        ),
    ];
    let mut seen_dirs = std::collections::BTreeSet::new();
    let mut libraries: Vec<(String, PathBuf)> =
        binaries.iter().flat_map(|b| libraries(b)).collect();
    libraries.sort();
    libraries.dedup();
    for (path, real) in libraries {
        let mut dir = String::new();
        for part in Path::new(&path)
            .parent()
            .into_iter()
            .flat_map(|p| p.iter())
            .skip(1)
        {
            dir = format!("{dir}/{}", part.to_string_lossy());
            if seen_dirs.insert(dir.clone()) {
                entries.push(Entry::dir(&dir, 0o755, 0));
            }
        }
        let content =
            std::fs::read(&real).unwrap_or_else(|e| panic!("read {}: {e}", real.display()));
        entries.push(Entry::file(&path, content, 0o755));
    }
    layer(&entries)
}

fn sha256(bytes: &[u8]) -> String {
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes to `archive` the image `tag` that `stage` describes, each `COPY` source found by
/// `local` (the build stage's path → a file of this checkout).
pub fn assemble(stage: &FinalStage, local: impl Fn(&str) -> PathBuf, tag: &str, archive: &Path) {
    let copies: Vec<(PathBuf, &str)> = stage
        .copies
        .iter()
        .map(|(source, destination)| (local(source), destination.as_str()))
        .collect();
    for (source, _) in &copies {
        assert!(source.is_file(), "{} is not built", source.display());
    }
    let base = base_layer(&copies.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    let files: Vec<Entry> = copies
        .iter()
        .map(|(source, destination)| {
            Entry::file(
                destination,
                std::fs::read(source).expect("read a binary"),
                0o755,
            )
        })
        .collect();
    let top = layer(&files);
    let layers = [base, top];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256(l)))
        .collect();
    let exposed: serde_json::Map<String, serde_json::Value> = stage
        .exposed
        .iter()
        .map(|p| {
            let port = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            (port, json!({}))
        })
        .collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": stage.user,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "Entrypoint": stage.entrypoint,
            "Cmd": if stage.cmd.is_empty() { serde_json::Value::Null } else { json!(stage.cmd) },
            "ExposedPorts": exposed,
            "Labels": stage.labels,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let config_name = format!("{}.json", sha256(&config));
    let layer_names: Vec<String> = diff_ids
        .iter()
        .map(|d| format!("{}/layer.tar", d.trim_start_matches("sha256:")))
        .collect();
    let manifest = json!([{"Config": config_name, "RepoTags": [tag], "Layers": layer_names}])
        .to_string()
        .into_bytes();
    let mut entries = vec![
        Entry::file("manifest.json", manifest, 0o644),
        Entry::file(&config_name, config, 0o644),
    ];
    for (name, bytes) in layer_names.iter().zip(layers) {
        entries.push(Entry::dir(name.trim_end_matches("/layer.tar"), 0o755, 0));
        entries.push(Entry::file(name, bytes, 0o644));
    }
    std::fs::write(archive, layer(&entries)).expect("write the image archive");
}

/// The image the Dockerfile at `dockerfile` (relative to the checkout) makes, from this
/// checkout's binaries, as `tag`, written to `archive`. The build stage works in `/src`, a copy of
/// the checkout, so `/src/target/...` is this checkout's `target/...`.
pub fn from_dockerfile(dockerfile: &str, tag: &str, archive: &Path) -> FinalStage {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(dockerfile))
        .unwrap_or_else(|e| panic!("read {dockerfile}: {e}"));
    let stage = final_stage(&text).unwrap_or_else(|e| panic!("{dockerfile}: {e}"));
    assemble(
        &stage,
        |source| root.join(source.trim_start_matches("/src/")),
        tag,
        archive,
    );
    stage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_stage_is_read_and_anything_else_refused() {
        let stage = final_stage(
            "FROM rust AS build\nRUN cargo build\n\nFROM base:1 AS run\nLABEL a=\"x y\" \\\n      b=\"z\"\nCOPY --from=build /src/bin /usr/local/bin/bin\nUSER 65532:65532\nEXPOSE 8080 9443\nENTRYPOINT [\"/usr/local/bin/bin\"]\nCMD [\"run\"]\n",
        )
        .unwrap();
        assert_eq!(stage.base, "base:1");
        assert_eq!(
            stage.copies,
            [("/src/bin".to_string(), "/usr/local/bin/bin".to_string())]
        );
        assert_eq!(stage.user, "65532:65532");
        assert_eq!(stage.exposed, ["8080", "9443"]);
        assert_eq!(stage.entrypoint, ["/usr/local/bin/bin"]);
        assert_eq!(stage.cmd, ["run"]);
        assert_eq!(stage.labels["a"], "x y");
        let unknown = final_stage("FROM a\nRUN rm -rf /\n").unwrap_err();
        assert!(unknown.contains("RUN is not read here"), "{unknown}");
    }
}
