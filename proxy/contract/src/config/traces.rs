//! OpenTelemetry trace export, read from the variables every OpenTelemetry SDK reads, each checked
//! here so that a wrong one stops the start with its name (an SDK would ignore it quietly).

use std::time::Duration;

use http::Uri;
use http::header::{HeaderName, HeaderValue};

use super::vars::names;
use super::{ConfigError, Secret, bool, error, inline, parsed};
use crate::egress::percent_decode;
use crate::sidecar_env::TracesEnv;

/// Where and how spans are exported. `None` in [`super::Config`] when tracing is off.
#[derive(Debug, Clone)]
pub struct Traces {
    /// The full URL spans are POSTed to.
    pub endpoint: Uri,
    pub protocol: OtlpProtocol,
    /// Sent with every export: names in the clear, values secret.
    pub headers: Vec<(HeaderName, Secret)>,
    pub timeout: Duration,
    pub sampler: Sampler,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded, in their order.
    pub resource_attributes: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    HttpJson,
}

/// `OTEL_TRACES_SAMPLER` with its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// The caller's sampling decision when it sent one, else the root sampler's.
    ParentBased(RootSampler),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// The OTLP/HTTP path of traces under a base endpoint.
const TRACES_PATH: &str = "v1/traces";

impl Traces {
    /// `None` when no endpoint is set or `OTEL_SDK_DISABLED` is true.
    pub fn from_env(env: &TracesEnv) -> Result<Option<Self>, ConfigError> {
        let disabled = bool(names::OTEL_SDK_DISABLED, &env.disabled)?;
        let endpoint = match (&env.traces_endpoint, &env.endpoint) {
            (Some(url), _) => parse_endpoint(url)
                .map_err(|m| error(names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, m))?,
            (None, Some(base)) => {
                let base = parse_endpoint(base)
                    .map_err(|m| error(names::OTEL_EXPORTER_OTLP_ENDPOINT, m))?;
                let joined = format!("{}/{TRACES_PATH}", base.to_string().trim_end_matches('/'));
                joined
                    .parse()
                    .map_err(|_| error(names::OTEL_EXPORTER_OTLP_ENDPOINT, "is not a URL"))?
            }
            (None, None) => return Ok(None),
        };
        let protocol = parsed(names::OTEL_EXPORTER_OTLP_PROTOCOL, &env.protocol, |text| {
            match text {
                "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
                "http/json" => Ok(OtlpProtocol::HttpJson),
                "grpc" => Err("grpc is not supported: use http/protobuf (a collector's OTLP/HTTP port, 4318 by default)".into()),
                _ => Err(format!("{text:?} is not an OTLP protocol (use http/protobuf or http/json)")),
            }
        })?;
        let headers = match &env.headers {
            Some(value) => {
                let text = inline(names::OTEL_EXPORTER_OTLP_HEADERS, value)?;
                parse_headers(text.expose())
                    .map_err(|m| error(names::OTEL_EXPORTER_OTLP_HEADERS, m))?
            }
            None => Vec::new(),
        };
        let timeout = parsed(
            names::OTEL_EXPORTER_OTLP_TIMEOUT,
            &env.timeout,
            |text| match text.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(format!("{text:?} is not a positive number of milliseconds")),
            },
        )?;
        let sampler = sampler(&env.sampler, &env.sampler_arg)?;
        let service_name = parsed(names::OTEL_SERVICE_NAME, &env.service_name, |t| {
            Ok(t.to_string())
        })?;
        let resource_attributes = match &env.resource_attributes {
            Some(text) => parse_pairs(text)
                .map_err(|m| error(names::OTEL_RESOURCE_ATTRIBUTES, m))?
                .into_iter()
                .map(|(key, value)| {
                    String::from_utf8(value)
                        .map(|value| (key, value))
                        .map_err(|_| {
                            error(
                                names::OTEL_RESOURCE_ATTRIBUTES,
                                "a value is not UTF-8 once decoded",
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok((!disabled).then_some(Self {
            endpoint,
            protocol,
            headers,
            timeout,
            sampler,
            service_name,
            resource_attributes,
        }))
    }
}

fn parse_endpoint(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if uri.query().is_none() => Ok(uri),
        _ => Err(format!(
            "{text:?} must be an http:// or https:// URL without a query (example: http://otel-collector:4318)"
        )),
    }
}

fn sampler(name: &Option<String>, arg: &Option<String>) -> Result<Sampler, ConfigError> {
    let ratio = || {
        parsed(names::OTEL_TRACES_SAMPLER_ARG, arg, |text| {
            match text.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("{text:?} is not a ratio from 0 to 1")),
            }
        })
    };
    let text = name
        .as_deref()
        .unwrap_or_else(|| super::default_of(names::OTEL_TRACES_SAMPLER));
    Ok(match text {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(RootSampler::TraceIdRatio(ratio()?)),
        _ => {
            return Err(error(
                names::OTEL_TRACES_SAMPLER,
                format!(
                    "{text:?} is not a sampler (use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
                ),
            ));
        }
    })
}

/// `key=value,key=value` with percent-encoded values (the W3C baggage form the OpenTelemetry
/// specification uses for headers and resource attributes).
fn parse_pairs(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .enumerate()
        .map(|(index, pair)| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!("entry {} has no '=' (use key=value,key=value)", index + 1)
            })?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("entry {} has an empty key", index + 1));
            }
            Ok((key.to_string(), percent_decode(value.trim())))
        })
        .collect()
}

/// Never quotes a value: headers carry credentials.
fn parse_headers(text: &str) -> Result<Vec<(HeaderName, Secret)>, String> {
    parse_pairs(text)?
        .into_iter()
        .map(|(name, value)| {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a header name"))?;
            let value = String::from_utf8(value)
                .ok()
                .filter(|v| HeaderValue::from_str(v).is_ok())
                .ok_or_else(|| format!("the value of {name} is not a valid header value"))?;
            Ok((header, Secret::new(value)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces(vars: &[(&'static str, &str)]) -> Result<Option<Traces>, ConfigError> {
        let get = |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        Traces::from_env(&TracesEnv {
            endpoint: get(names::OTEL_EXPORTER_OTLP_ENDPOINT),
            traces_endpoint: get(names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
            protocol: get(names::OTEL_EXPORTER_OTLP_PROTOCOL),
            headers: get(names::OTEL_EXPORTER_OTLP_HEADERS)
                .map(|v| crate::sidecar_env::SecretValue::Inline(Secret::new(v))),
            timeout: get(names::OTEL_EXPORTER_OTLP_TIMEOUT),
            sampler: get(names::OTEL_TRACES_SAMPLER),
            sampler_arg: get(names::OTEL_TRACES_SAMPLER_ARG),
            service_name: get(names::OTEL_SERVICE_NAME),
            resource_attributes: get(names::OTEL_RESOURCE_ATTRIBUTES),
            disabled: get(names::OTEL_SDK_DISABLED),
        })
    }

    const BASE: (&str, &str) = (names::OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318");

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(traces(&[]).unwrap().is_none());
        assert!(
            traces(&[BASE, (names::OTEL_SDK_DISABLED, "true")])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_defaults() {
        let t = traces(&[BASE]).unwrap().unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.timeout, Duration::from_secs(10));
        assert_eq!(t.sampler, Sampler::ParentBased(RootSampler::AlwaysOn));
        assert_eq!(t.service_name, "aoai-proxy");
        assert!(t.headers.is_empty() && t.resource_attributes.is_empty());
    }

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_traces_endpoint_is_taken_as_written() {
        let t = traces(&[(names::OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4318/otlp/")]);
        assert_eq!(
            t.unwrap().unwrap().endpoint,
            "https://c:4318/otlp/v1/traces"
        );
        let t = traces(&[
            BASE,
            (names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://t:1/x"),
        ]);
        assert_eq!(t.unwrap().unwrap().endpoint, "http://t:1/x");
    }

    #[test]
    fn headers_and_attributes_are_percent_decoded() {
        let t = traces(&[
            BASE,
            (
                names::OTEL_EXPORTER_OTLP_HEADERS,
                "authorization=Bearer%20abc, x-tenant = a%2Cb",
            ),
            (
                names::OTEL_RESOURCE_ATTRIBUTES,
                "k8s.namespace.name=shop,note=a%3Db",
            ),
        ])
        .unwrap()
        .unwrap();
        let headers: Vec<(&str, &str)> = t
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.expose()))
            .collect();
        assert_eq!(
            headers,
            [("authorization", "Bearer abc"), ("x-tenant", "a,b")]
        );
        assert_eq!(
            t.resource_attributes,
            [
                ("k8s.namespace.name".to_string(), "shop".to_string()),
                ("note".to_string(), "a=b".to_string())
            ]
        );
    }

    #[test]
    fn samplers_with_their_ratio() {
        let t = traces(&[
            BASE,
            (names::OTEL_TRACES_SAMPLER, "parentbased_traceidratio"),
            (names::OTEL_TRACES_SAMPLER_ARG, "0.25"),
        ]);
        assert_eq!(
            t.unwrap().unwrap().sampler,
            Sampler::ParentBased(RootSampler::TraceIdRatio(0.25))
        );
        let t = traces(&[BASE, (names::OTEL_TRACES_SAMPLER, "traceidratio")]);
        assert_eq!(t.unwrap().unwrap().sampler, Sampler::TraceIdRatio(1.0));
    }

    #[test]
    fn each_bad_value_names_its_variable_and_never_quotes_a_header_value() {
        for (vars, variable) in [
            (
                vec![(names::OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318")],
                names::OTEL_EXPORTER_OTLP_ENDPOINT,
            ),
            (
                vec![(
                    names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                    "ftp://c/v1/traces",
                )],
                names::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            ),
            (
                vec![BASE, (names::OTEL_EXPORTER_OTLP_PROTOCOL, "grpc")],
                names::OTEL_EXPORTER_OTLP_PROTOCOL,
            ),
            (
                vec![BASE, (names::OTEL_EXPORTER_OTLP_PROTOCOL, "http")],
                names::OTEL_EXPORTER_OTLP_PROTOCOL,
            ),
            (
                vec![BASE, (names::OTEL_EXPORTER_OTLP_HEADERS, "authorization")],
                names::OTEL_EXPORTER_OTLP_HEADERS,
            ),
            (
                vec![
                    BASE,
                    (names::OTEL_EXPORTER_OTLP_HEADERS, "a b=secret-value"),
                ],
                names::OTEL_EXPORTER_OTLP_HEADERS,
            ),
            (
                vec![
                    BASE,
                    (names::OTEL_EXPORTER_OTLP_HEADERS, "x=secret%0Avalue"),
                ],
                names::OTEL_EXPORTER_OTLP_HEADERS,
            ),
            (
                vec![BASE, (names::OTEL_EXPORTER_OTLP_TIMEOUT, "10s")],
                names::OTEL_EXPORTER_OTLP_TIMEOUT,
            ),
            (
                vec![BASE, (names::OTEL_TRACES_SAMPLER, "sometimes")],
                names::OTEL_TRACES_SAMPLER,
            ),
            (
                vec![
                    BASE,
                    (names::OTEL_TRACES_SAMPLER, "traceidratio"),
                    (names::OTEL_TRACES_SAMPLER_ARG, "2"),
                ],
                names::OTEL_TRACES_SAMPLER_ARG,
            ),
            (
                vec![BASE, (names::OTEL_RESOURCE_ATTRIBUTES, "=x")],
                names::OTEL_RESOURCE_ATTRIBUTES,
            ),
            (
                vec![BASE, (names::OTEL_SDK_DISABLED, "maybe")],
                names::OTEL_SDK_DISABLED,
            ),
        ] {
            let message = traces(&vars).unwrap_err().to_string();
            assert!(message.starts_with(variable), "{vars:?}: {message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }
}
