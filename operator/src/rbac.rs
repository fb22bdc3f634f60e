//! Every Kubernetes permission the operator needs, defined once: the Helm chart's ClusterRole and
//! Role and the README's RBAC table are generated from [`PERMISSIONS`] (tests keep them equal),
//! and the API-server scenarios check each request the operator makes with [`allows`].

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    Cluster,
    /// Every namespace, or only those the platform lists in the chart's `rbac.secretNamespaces`
    /// (a Role in each, and `--secret-namespaces`).
    SecretNamespaces,
    /// The operator's own namespace (a Role).
    OperatorNamespace,
}

pub struct Permission {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Restricted to the operator's own object of this kind (by name), when set.
    pub own_object_only: bool,
    pub why: &'static str,
}

const fn permission(
    group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
    scope: Scope,
    why: &'static str,
) -> Permission {
    Permission {
        group,
        resources,
        verbs,
        scope,
        own_object_only: false,
        why,
    }
}

pub const PERMISSIONS: &[Permission] = &[
    permission(
        "aoai-proxy.io",
        &["azureopenaiproxies"],
        &["list", "watch"],
        Scope::Cluster,
        "the controller's watch and every replica's webhook cache",
    ),
    permission(
        "aoai-proxy.io",
        &["azureopenaiproxies/status"],
        &["patch"],
        Scope::Cluster,
        "status by server-side apply",
    ),
    permission(
        "",
        &["secrets", "configmaps"],
        &["get", "list", "watch"],
        Scope::SecretNamespaces,
        "the Secrets (and CA-bundle ConfigMaps) configurations reference: watched by metadata only, each referenced one read when its configuration is checked (content is checked, never copied or kept)",
    ),
    permission(
        "",
        &["pods"],
        &["list", "watch"],
        Scope::Cluster,
        "cache of injected pods (label aoai-proxy.io/proxy), for the pod counts",
    ),
    permission(
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
        Scope::Cluster,
        "Events on AzureOpenAIProxy objects and on the owners of admitted pods",
    ),
    permission(
        "apps",
        &["replicasets"],
        &["get"],
        Scope::Cluster,
        "rollout: Restart finds the Deployment that owns a stale pod's ReplicaSet",
    ),
    permission(
        "apps",
        &["deployments", "statefulsets", "daemonsets"],
        &["patch"],
        Scope::Cluster,
        "rollout: Restart",
    ),
    Permission {
        group: "admissionregistration.k8s.io",
        resources: &["mutatingwebhookconfigurations"],
        verbs: &["get", "patch"],
        scope: Scope::Cluster,
        own_object_only: true,
        why: "the self-managed caBundle, on the operator's own configuration only",
    },
    permission(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update"],
        Scope::OperatorNamespace,
        "leader election",
    ),
    permission(
        "",
        &["secrets"],
        &["get", "create", "update"],
        Scope::OperatorNamespace,
        "the self-managed webhook certificate",
    ),
];

/// The (group, resource, namespaced, verb) an API request needs, from its method and URI.
pub fn requirement(
    method: &http::Method,
    uri: &http::Uri,
) -> Option<(String, String, bool, &'static str)> {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let (namespaced, rest) = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => (true, rest),
        rest => (false, rest),
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|p| p == "watch=true");
    let verb = match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => return None,
    };
    Some((group, resource, namespaced, verb))
}

/// Whether [`PERMISSIONS`] let the operator make this request (cluster-wide rules cover any
/// namespace; namespace rules are assumed to be the operator's namespace).
pub fn allows(method: &http::Method, uri: &http::Uri) -> bool {
    let Some((group, resource, _, verb)) = requirement(method, uri) else {
        return false;
    };
    PERMISSIONS.iter().any(|p| {
        p.group == group && p.resources.contains(&resource.as_str()) && p.verbs.contains(&verb)
    })
}

/// The entries under `rules:` of the ClusterRole (`Scope::Cluster`), the operator's Role
/// (`Scope::OperatorNamespace`) or the Secret rules (`Scope::SecretNamespaces`), as the chart
/// writes them. `own_name` is the template expression for the operator's own objects.
pub fn chart_rules(scope: Scope, own_name: &str) -> String {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rules = String::new();
    for p in PERMISSIONS.iter().filter(|p| p.scope == scope) {
        rules.push_str(&format!("  # {}\n", p.why));
        rules.push_str(&format!("  - apiGroups: [\"{}\"]\n", p.group));
        rules.push_str(&format!("    resources: [{}]\n", list(p.resources)));
        if p.own_object_only {
            rules.push_str(&format!("    resourceNames: [{own_name}]\n"));
        }
        rules.push_str(&format!("    verbs: [{}]\n", list(p.verbs)));
    }
    rules
}

/// The README's RBAC table.
pub fn markdown_table() -> String {
    let mut table =
        String::from("| API group | resources | verbs | where | why |\n|---|---|---|---|---|\n");
    for p in PERMISSIONS {
        let code = |items: &[&str]| {
            items
                .iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let scope = match (p.scope, p.own_object_only) {
            (Scope::Cluster, false) => "cluster",
            (Scope::Cluster, true) => "cluster, its own object only",
            (Scope::SecretNamespaces, _) => {
                "cluster, or only the namespaces in `rbac.secretNamespaces`"
            }
            (Scope::OperatorNamespace, _) => "the operator's namespace",
        };
        table.push_str(&format!(
            "| `{}` | {} | {} | {scope} | {} |\n",
            if p.group.is_empty() { "\"\"" } else { p.group },
            code(p.resources),
            code(p.verbs),
            p.why
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(method: http::Method, uri: &str) -> Option<(String, String, bool, &'static str)> {
        requirement(&method, &uri.parse().unwrap())
    }

    #[test]
    fn requests_map_to_verbs() {
        use http::Method;
        assert_eq!(
            need(Method::GET, "/api/v1/pods?labelSelector=x"),
            Some(("".into(), "pods".into(), false, "list"))
        );
        assert_eq!(
            need(Method::GET, "/api/v1/secrets?watch=true&resourceVersion=1"),
            Some(("".into(), "secrets".into(), false, "watch"))
        );
        assert_eq!(
            need(
                Method::PATCH,
                "/apis/aoai-proxy.io/v1alpha1/namespaces/ns/azureopenaiproxies/p/status?fieldManager=x"
            ),
            Some((
                "aoai-proxy.io".into(),
                "azureopenaiproxies/status".into(),
                true,
                "patch"
            ))
        );
        assert_eq!(
            need(
                Method::GET,
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/aoai-operator"
            ),
            Some((
                "admissionregistration.k8s.io".into(),
                "mutatingwebhookconfigurations".into(),
                false,
                "get"
            ))
        );
        assert_eq!(
            need(Method::POST, "/api/v1/namespaces/ns/secrets"),
            Some(("".into(), "secrets".into(), true, "create"))
        );
        assert!(allows(
            &Method::PUT,
            &"/apis/coordination.k8s.io/v1/namespaces/x/leases/l"
                .parse()
                .unwrap()
        ));
        assert!(!allows(
            &Method::DELETE,
            &"/api/v1/namespaces/x/pods/p".parse().unwrap()
        ));
        assert!(!allows(
            &Method::PATCH,
            &"/api/v1/namespaces/x/pods/p".parse().unwrap()
        ));
    }
}
