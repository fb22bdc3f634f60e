//! What a kubelet does for a container before it starts, on 127.0.0.1 and in a scratch folder:
//! the container's volumes written from the Secrets and ConfigMaps they name (and a projected
//! service-account token), `valueFrom` resolved, and every path under a mount moved into the
//! folder. The operator's tests start the injected sidecar from this environment, as a pod would.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The kind of object a volume or `valueFrom` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Secret,
    ConfigMap,
}

/// `container`'s environment once its volumes are written under `root`. `content` gives the value
/// of a key of a named Secret or ConfigMap; the projected service-account token is
/// `service_account_token`.
pub fn environment(
    pod: &PodSpec,
    container: &Container,
    content: &dyn Fn(Source, &str, &str) -> String,
    service_account_token: &str,
    root: &Path,
) -> HashMap<String, String> {
    let mut moved: Vec<(String, String)> = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volume {} is mounted but not declared", mount.name));
        let dir = root.join(mount.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("create a mount folder");
        let mut files: Vec<(String, String)> = Vec::new();
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            for item in secret.items.iter().flatten() {
                files.push((item.path.clone(), content(Source::Secret, &name, &item.key)));
            }
        }
        if let Some(map) = &volume.config_map {
            for item in map.items.iter().flatten() {
                files.push((
                    item.path.clone(),
                    content(Source::ConfigMap, &map.name, &item.key),
                ));
            }
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(token) = &source.service_account_token {
                files.push((token.path.clone(), service_account_token.to_string()));
            }
        }
        for (path, value) in files {
            std::fs::write(dir.join(path), value).expect("write a mounted file");
        }
        moved.push((mount.mount_path.clone(), dir.display().to_string()));
    }
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(from)) => match (&from.secret_key_ref, &from.config_map_key_ref) {
                    (Some(key), _) => content(Source::Secret, &key.name, &key.key),
                    (None, Some(key)) => content(Source::ConfigMap, &key.name, &key.key),
                    // Downward API values: none of the proxy's variables.
                    (None, None) => String::new(),
                },
                (None, None) => String::new(),
            };
            let value = moved
                .iter()
                .find_map(|(mount, dir)| {
                    let rest = value.strip_prefix(&format!("{mount}/"))?;
                    Some(format!("{dir}/{rest}"))
                })
                .unwrap_or(value);
            (var.name.clone(), value)
        })
        .collect()
}
