//! Client configuration from environment variables and a TOML profile file, with the behaviour of
//! Temporal's `envconfig` (same variables, file location, profile selection and precedence), plus
//! one DBOSify variable.
//!
//! # Where the address comes from (first match wins)
//!
//! 1. `TEMPORAL_ADDRESS` (unless `disable_env`);
//! 2. `DBOS_SYSTEM_DATABASE_URL` (unless `disable_env`); it beats the profile file because a file
//!    left over from a Temporal setup usually names a Temporal server;
//! 3. `address` of the selected profile in the TOML file (unless `disable_file`);
//! 4. `http://localhost:7233`, Temporal's default, which [`crate::Connection::connect`] refuses
//!    with a message saying to set `TEMPORAL_ADDRESS` to a Postgres URL.
//!
//! The file is `config_source`, else `$TEMPORAL_CONFIG_FILE`, else
//! `<config dir>/temporalio/temporal.toml` (a missing file is an empty configuration). The profile
//! is `config_file_profile`, else `$TEMPORAL_PROFILE`, else `default`; a profile named explicitly
//! but absent is [`ConfigError::ProfileNotFound`]. Other variables (`TEMPORAL_NAMESPACE`,
//! `TEMPORAL_API_KEY`, `TEMPORAL_TLS*`, `TEMPORAL_CODEC_*`, `TEMPORAL_GRPC_META_*`) override the
//! profile as in Temporal; TLS, API keys and gRPC metadata are then refused at connect.

use std::collections::HashMap;

use serde::Deserialize;
use url::Url;

use crate::options::{ClientOptions, ClientTlsOptions, ConnectionOptions, TlsOptions};

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";
/// File name of the default configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "temporal.toml";
/// Temporal's default address (refused at connect).
pub const DEFAULT_ADDRESS: &str = "http://localhost:7233";
/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "default";
/// DBOSify's own variable naming the Postgres URL.
pub const DBOS_SYSTEM_DATABASE_URL: &str = "DBOS_SYSTEM_DATABASE_URL";

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The named profile is not in the file.
    #[error("Profile '{0}' not found")]
    ProfileNotFound(String),
    /// The configuration is contradictory or malformed.
    #[error("Invalid configuration: {0}")]
    InvalidConfig(String),
    /// Reading or parsing failed.
    #[error("Configuration loading error: {0}")]
    LoadError(Box<dyn std::error::Error + Send + Sync>),
}

/// Configuration (or certificate) bytes: a file path or the data itself.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DataSource {
    /// A path.
    Path(String),
    /// The bytes.
    Data(Vec<u8>),
}

/// All profiles of a configuration file.
#[derive(Debug, Clone, PartialEq, Default, bon::Builder)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Profiles by name.
    #[builder(default)]
    pub profiles: HashMap<String, ClientConfigProfile>,
}

/// One profile.
#[derive(Debug, Clone, PartialEq, Default, bon::Builder)]
#[non_exhaustive]
pub struct ClientConfigProfile {
    /// Address (for DBOSify: a Postgres URL).
    pub address: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// API key (refused at connect).
    pub api_key: Option<String>,
    /// TLS (refused at connect unless disabled).
    pub tls: Option<ClientConfigTLS>,
    /// Remote codec (ignored, as by Temporal's Rust client).
    pub codec: Option<ClientConfigCodec>,
    /// gRPC metadata (refused at connect when non-empty).
    #[builder(default)]
    pub grpc_meta: HashMap<String, String>,
}

/// TLS section of a profile.
#[derive(Debug, Clone, PartialEq, Default, bon::Builder)]
#[non_exhaustive]
pub struct ClientConfigTLS {
    /// Explicitly disabled.
    pub disabled: Option<bool>,
    /// Client certificate.
    pub client_cert: Option<DataSource>,
    /// Client key.
    pub client_key: Option<DataSource>,
    /// Server CA certificate.
    pub server_ca_cert: Option<DataSource>,
    /// Server name override.
    pub server_name: Option<String>,
    /// Skip host verification.
    #[builder(default)]
    pub disable_host_verification: bool,
}

/// Codec section of a profile.
#[derive(Debug, Clone, PartialEq, Default, bon::Builder)]
#[non_exhaustive]
pub struct ClientConfigCodec {
    /// Endpoint.
    pub endpoint: Option<String>,
    /// Authorization.
    pub auth: Option<String>,
}

/// Options of [`load_client_config`].
#[derive(Debug, PartialEq, Default, bon::Builder)]
#[non_exhaustive]
pub struct LoadClientConfigOptions {
    /// Where to read the file from (default: `$TEMPORAL_CONFIG_FILE`, then the default path).
    pub config_source: Option<DataSource>,
    /// Reject unknown keys.
    #[builder(default)]
    pub config_file_strict: bool,
}

/// Options of [`load_client_config_profile`] and `ClientOptions::load_from_config`.
#[derive(Debug, PartialEq, Default, bon::Builder)]
#[non_exhaustive]
pub struct LoadClientConfigProfileOptions {
    /// Where to read the file from (default: `$TEMPORAL_CONFIG_FILE`, then the default path).
    pub config_source: Option<DataSource>,
    /// Profile name (default: `$TEMPORAL_PROFILE`, then `default`).
    pub config_file_profile: Option<String>,
    /// Reject unknown keys.
    #[builder(default)]
    pub config_file_strict: bool,
    /// Do not read the file.
    #[builder(default)]
    pub disable_file: bool,
    /// Do not read environment variables.
    #[builder(default)]
    pub disable_env: bool,
}

/// Options of [`ClientConfig::from_toml`].
#[derive(Debug, PartialEq, Default, bon::Builder)]
#[non_exhaustive]
pub struct ClientConfigFromTOMLOptions {
    /// Reject unknown keys.
    #[builder(default)]
    pub strict: bool,
}

/// Where environment variables are read from: the process, or a map (tests).
#[derive(Clone, Copy)]
enum Env<'a> {
    Process,
    Map(&'a HashMap<String, String>),
}

impl Env<'_> {
    fn get(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self {
            Env::Map(m) => Ok(m.get(key).cloned()),
            Env::Process => match std::env::var(key) {
                Ok(v) => Ok(Some(v)),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(e) => Err(ConfigError::LoadError(Box::new(e))),
            },
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        match self {
            Env::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Env::Process => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }
}

fn env_of(env_vars: Option<&HashMap<String, String>>) -> Env<'_> {
    env_vars.map_or(Env::Process, Env::Map)
}

fn read_optional(path: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::LoadError(
            format!("cannot read config file {path}: {e}").into(),
        )),
    }
}

fn default_config_file() -> Option<String> {
    dirs::config_dir().map(|d| {
        d.join("temporalio")
            .join(DEFAULT_CONFIG_FILE)
            .to_string_lossy()
            .into_owned()
    })
}

/// Loads every profile of the configuration file (`config_source`, else `$TEMPORAL_CONFIG_FILE`,
/// else the default path; a missing file is an empty configuration). `env_vars` replaces the
/// process environment when given.
pub fn load_client_config(
    options: LoadClientConfigOptions,
    env_vars: Option<&HashMap<String, String>>,
) -> Result<ClientConfig, ConfigError> {
    let env = env_of(env_vars);
    let bytes = match options.config_source {
        Some(DataSource::Data(d)) => Some(d),
        Some(DataSource::Path(p)) => read_optional(&p)?,
        None => {
            let path = env
                .get("TEMPORAL_CONFIG_FILE")?
                .filter(|p| !p.is_empty())
                .or_else(default_config_file);
            match path {
                Some(p) => read_optional(&p)?,
                None => None,
            }
        }
    };
    match bytes {
        Some(b) => ClientConfig::from_toml(
            &b,
            ClientConfigFromTOMLOptions {
                strict: options.config_file_strict,
            },
        ),
        None => Ok(ClientConfig::default()),
    }
}

/// Loads one profile: from the file (unless `disable_file`), then environment overrides (unless
/// `disable_env`). Disabling both is an error.
pub fn load_client_config_profile(
    options: LoadClientConfigProfileOptions,
    env_vars: Option<&HashMap<String, String>>,
) -> Result<ClientConfigProfile, ConfigError> {
    if options.disable_file && options.disable_env {
        return Err(ConfigError::InvalidConfig(
            "Cannot disable both file and environment loading".into(),
        ));
    }
    let env = env_of(env_vars);
    let mut profile = if options.disable_file {
        ClientConfigProfile::default()
    } else {
        let config = load_client_config(
            LoadClientConfigOptions {
                config_source: options.config_source,
                config_file_strict: options.config_file_strict,
            },
            env_vars,
        )?;
        let explicit = match options.config_file_profile {
            Some(p) => Some(p),
            None if !options.disable_env => env.get("TEMPORAL_PROFILE")?.filter(|p| !p.is_empty()),
            None => None,
        };
        let name = explicit.clone().unwrap_or_else(|| DEFAULT_PROFILE.into());
        match config.profiles.get(&name) {
            Some(p) => p.clone(),
            None if explicit.is_some() => return Err(ConfigError::ProfileNotFound(name)),
            None => ClientConfigProfile::default(),
        }
    };
    if !options.disable_env {
        profile.load_from_env(env_vars)?;
    }
    Ok(profile)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn meta_key(k: &str) -> String {
    k.to_lowercase().replace('_', "-")
}

fn env_source(
    env: Env<'_>,
    what: &str,
    path_var: &str,
    data_var: &str,
    slot: &mut Option<DataSource>,
) -> Result<(), ConfigError> {
    match (env.get(path_var)?, env.get(data_var)?) {
        (Some(_), Some(_)) => Err(ConfigError::InvalidConfig(format!(
            "Cannot specify both {path_var} and {data_var}"
        ))),
        (Some(path), None) => {
            if matches!(slot, Some(DataSource::Data(_))) {
                return Err(ConfigError::InvalidConfig(format!(
                    "Cannot specify {what} path via {path_var} when {what} data is already specified"
                )));
            }
            *slot = Some(DataSource::Path(path));
            Ok(())
        }
        (None, Some(data)) => {
            if matches!(slot, Some(DataSource::Path(_))) {
                return Err(ConfigError::InvalidConfig(format!(
                    "Cannot specify {what} data via {data_var} when {what} path is already specified"
                )));
            }
            *slot = Some(DataSource::Data(data.into_bytes()));
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

impl ClientConfigProfile {
    /// Applies the `TEMPORAL_*` environment overrides (`env_vars` replaces the process
    /// environment when given).
    pub fn load_from_env(
        &mut self,
        env_vars: Option<&HashMap<String, String>>,
    ) -> Result<(), ConfigError> {
        let env = env_of(env_vars);
        if let Some(v) = env.get("TEMPORAL_ADDRESS")? {
            self.address = Some(v);
        }
        if let Some(v) = env.get("TEMPORAL_NAMESPACE")? {
            self.namespace = Some(v);
        }
        if let Some(v) = env.get("TEMPORAL_API_KEY")? {
            self.api_key = Some(v);
        }

        const TLS_VARS: [&str; 9] = [
            "TEMPORAL_TLS",
            "TEMPORAL_TLS_CLIENT_CERT_PATH",
            "TEMPORAL_TLS_CLIENT_CERT_DATA",
            "TEMPORAL_TLS_CLIENT_KEY_PATH",
            "TEMPORAL_TLS_CLIENT_KEY_DATA",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
            "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
            "TEMPORAL_TLS_SERVER_NAME",
            "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION",
        ];
        if self.tls.is_none() {
            for v in TLS_VARS {
                if env.get(v)?.is_some() {
                    self.tls = Some(ClientConfigTLS::default());
                    break;
                }
            }
        }
        if let Some(tls) = self.tls.as_mut() {
            if let Some(b) = env.get("TEMPORAL_TLS")?.as_deref().and_then(parse_bool) {
                tls.disabled = Some(!b);
            }
            env_source(
                env,
                "cert",
                "TEMPORAL_TLS_CLIENT_CERT_PATH",
                "TEMPORAL_TLS_CLIENT_CERT_DATA",
                &mut tls.client_cert,
            )?;
            env_source(
                env,
                "key",
                "TEMPORAL_TLS_CLIENT_KEY_PATH",
                "TEMPORAL_TLS_CLIENT_KEY_DATA",
                &mut tls.client_key,
            )?;
            env_source(
                env,
                "server CA cert",
                "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
                "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
                &mut tls.server_ca_cert,
            )?;
            if let Some(v) = env.get("TEMPORAL_TLS_SERVER_NAME")? {
                tls.server_name = Some(v);
            }
            if let Some(b) = env
                .get("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION")?
                .as_deref()
                .and_then(parse_bool)
            {
                tls.disable_host_verification = b;
            }
        }

        let endpoint = env.get("TEMPORAL_CODEC_ENDPOINT")?;
        let auth = env.get("TEMPORAL_CODEC_AUTH")?;
        if self.codec.is_none() && (endpoint.is_some() || auth.is_some()) {
            self.codec = Some(ClientConfigCodec::default());
        }
        if let Some(codec) = self.codec.as_mut() {
            if endpoint.is_some() {
                codec.endpoint = endpoint;
            }
            if auth.is_some() {
                codec.auth = auth;
            }
        }

        for (k, v) in env.vars() {
            if let Some(name) = k.strip_prefix("TEMPORAL_GRPC_META_") {
                let key = meta_key(name);
                if v.is_empty() {
                    self.grpc_meta.remove(&key);
                } else {
                    self.grpc_meta.insert(key, v);
                }
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// TOML
// ------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct FileLax {
    #[serde(default, rename = "profile")]
    profiles: HashMap<String, ProfileLax>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStrict {
    #[serde(default, rename = "profile")]
    profiles: HashMap<String, ProfileStrict>,
}

macro_rules! toml_profile {
    ($profile:ident, $tls:ident, $codec:ident $(, $attr:meta)?) => {
        #[derive(Deserialize)]
        $(#[$attr])?
        struct $profile {
            address: Option<String>,
            namespace: Option<String>,
            api_key: Option<String>,
            tls: Option<$tls>,
            codec: Option<$codec>,
            #[serde(default)]
            grpc_meta: HashMap<String, String>,
        }

        #[derive(Deserialize)]
        $(#[$attr])?
        struct $tls {
            disabled: Option<bool>,
            client_cert_path: Option<String>,
            client_cert_data: Option<String>,
            client_key_path: Option<String>,
            client_key_data: Option<String>,
            server_ca_cert_path: Option<String>,
            server_ca_cert_data: Option<String>,
            server_name: Option<String>,
            #[serde(default)]
            disable_host_verification: bool,
        }

        #[derive(Deserialize)]
        $(#[$attr])?
        struct $codec {
            endpoint: Option<String>,
            auth: Option<String>,
        }

        impl $profile {
            fn into_profile(self) -> Result<ClientConfigProfile, ConfigError> {
                let tls = match self.tls {
                    None => None,
                    Some(t) => Some(ClientConfigTLS {
                        disabled: t.disabled,
                        client_cert: source("client_cert", t.client_cert_path, t.client_cert_data)?,
                        client_key: source("client_key", t.client_key_path, t.client_key_data)?,
                        server_ca_cert: source(
                            "server_ca_cert",
                            t.server_ca_cert_path,
                            t.server_ca_cert_data,
                        )?,
                        server_name: t.server_name,
                        disable_host_verification: t.disable_host_verification,
                    }),
                };
                Ok(ClientConfigProfile {
                    address: self.address,
                    namespace: self.namespace,
                    api_key: self.api_key,
                    tls,
                    codec: self.codec.map(|c| ClientConfigCodec {
                        endpoint: c.endpoint,
                        auth: c.auth,
                    }),
                    grpc_meta: self
                        .grpc_meta
                        .into_iter()
                        .map(|(k, v)| (meta_key(&k), v))
                        .collect(),
                })
            }
        }
    };
}
toml_profile!(ProfileLax, TlsLax, CodecLax);
toml_profile!(
    ProfileStrict,
    TlsStrict,
    CodecStrict,
    serde(deny_unknown_fields)
);

fn source(
    what: &str,
    path: Option<String>,
    data: Option<String>,
) -> Result<Option<DataSource>, ConfigError> {
    if path.is_some() && data.is_some() {
        return Err(ConfigError::InvalidConfig(format!(
            "Cannot specify both {what}_path and {what}_data"
        )));
    }
    Ok(path.map(DataSource::Path).or_else(|| {
        data.filter(|d| !d.is_empty())
            .map(|d| DataSource::Data(d.into_bytes()))
    }))
}

impl ClientConfig {
    /// Parses a TOML configuration (`[profile.<name>]` tables).
    pub fn from_toml(
        toml_bytes: &[u8],
        options: ClientConfigFromTOMLOptions,
    ) -> Result<Self, ConfigError> {
        let text =
            std::str::from_utf8(toml_bytes).map_err(|e| ConfigError::LoadError(Box::new(e)))?;
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let load = |e: toml::de::Error| ConfigError::LoadError(Box::new(e));
        let mut profiles = HashMap::new();
        if options.strict {
            let file: FileStrict = toml::from_str(text).map_err(load)?;
            for (k, v) in file.profiles {
                profiles.insert(k, v.into_profile()?);
            }
        } else {
            let file: FileLax = toml::from_str(text).map_err(load)?;
            for (k, v) in file.profiles {
                profiles.insert(k, v.into_profile()?);
            }
        }
        Ok(Self { profiles })
    }
}

// ------------------------------------------------------------------------------------------
// Profile → options
// ------------------------------------------------------------------------------------------

fn resolve(source: DataSource) -> Result<Vec<u8>, ConfigError> {
    match source {
        DataSource::Data(d) => Ok(d),
        DataSource::Path(p) => std::fs::read(&p)
            .map_err(|e| ConfigError::LoadError(format!("cannot read {p}: {e}").into())),
    }
}

/// Parses an address; a bare `host:port` gets `http://` (or `https://` with TLS).
fn parse_address(address: &str, tls: bool) -> Result<Url, ConfigError> {
    if let Ok(url) = Url::parse(address)
        && url.host().is_some()
    {
        return Ok(url);
    }
    let scheme = if tls { "https" } else { "http" };
    Url::parse(&format!("{scheme}://{address}"))
        .map_err(|e| ConfigError::InvalidConfig(format!("Invalid address: {e}")))
}

impl TryFrom<ClientConfigProfile> for ConnectionOptions {
    type Error = ConfigError;

    fn try_from(profile: ClientConfigProfile) -> Result<Self, ConfigError> {
        let use_tls = match &profile.tls {
            Some(t) => t.disabled != Some(true),
            None => profile.api_key.is_some(),
        };
        let target = parse_address(
            profile.address.as_deref().unwrap_or(DEFAULT_ADDRESS),
            use_tls,
        )?;
        let tls_options = if use_tls {
            let t = profile.tls.unwrap_or_default();
            let client_tls_options = match (t.client_cert, t.client_key) {
                (Some(c), Some(k)) => Some(ClientTlsOptions {
                    client_cert: resolve(c)?,
                    client_private_key: resolve(k)?,
                }),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::InvalidConfig(
                        "Both client certificate and client key must be provided together".into(),
                    ));
                }
            };
            Some(TlsOptions {
                server_root_ca_cert: t.server_ca_cert.map(resolve).transpose()?,
                domain: t.server_name,
                client_tls_options,
            })
        } else {
            None
        };
        let headers = (!profile.grpc_meta.is_empty()).then_some(profile.grpc_meta);
        Ok(ConnectionOptions::new(target)
            .maybe_api_key(profile.api_key)
            .maybe_tls_options(tls_options)
            .maybe_headers(headers)
            .build())
    }
}

impl ClientOptions {
    /// Loads connection and client options from the environment and the profile file; see the
    /// [module documentation](crate::envconfig) for precedence.
    pub fn load_from_config(
        options: LoadClientConfigProfileOptions,
    ) -> Result<(ConnectionOptions, ClientOptions), ConfigError> {
        load_from_config_with_env(options, None)
    }
}

/// [`ClientOptions::load_from_config`] with an explicit environment (tests).
#[doc(hidden)]
pub fn load_from_config_with_env(
    options: LoadClientConfigProfileOptions,
    env_vars: Option<&HashMap<String, String>>,
) -> Result<(ConnectionOptions, ClientOptions), ConfigError> {
    let env_enabled = !options.disable_env;
    let env = env_of(env_vars);
    let mut profile = load_client_config_profile(options, env_vars)?;
    if env_enabled {
        let temporal_address = env.get("TEMPORAL_ADDRESS")?.filter(|v| !v.is_empty());
        let dbos_url = env.get(DBOS_SYSTEM_DATABASE_URL)?.filter(|v| !v.is_empty());
        if temporal_address.is_none()
            && let Some(url) = dbos_url
        {
            profile.address = Some(url);
        }
    }
    let namespace = profile
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let connection = ConnectionOptions::try_from(profile)?;
    Ok((connection, ClientOptions::new(namespace).build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn temp_file(contents: &str) -> String {
        let path = std::env::temp_dir().join(format!("dbosify-cfg-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        path.to_string_lossy().into_owned()
    }

    const FILE: &str = r#"
[profile.default]
address = "postgres://file@localhost/default"
namespace = "from-file"

[profile.other]
address = "postgres://file@localhost/other"

[profile.secure]
address = "postgres://file@localhost/secure"
[profile.secure.tls]
server_name = "x"
"#;

    #[test]
    fn env_address_and_namespace() {
        let e = env(&[
            ("TEMPORAL_ADDRESS", "postgres://u@h:5432/db"),
            ("TEMPORAL_NAMESPACE", "ns1"),
            ("TEMPORAL_CONFIG_FILE", "/nonexistent/x.toml"),
        ]);
        let (c, o) = load_from_config_with_env(Default::default(), Some(&e)).unwrap();
        assert_eq!(c.target.as_str(), "postgres://u@h:5432/db");
        assert_eq!(o.namespace, "ns1");
        assert!(c.tls_options.is_none() && c.api_key.is_none() && c.headers.is_none());
    }

    #[test]
    fn defaults_without_anything() {
        let e = env(&[("TEMPORAL_CONFIG_FILE", "/nonexistent/x.toml")]);
        let (c, o) = load_from_config_with_env(Default::default(), Some(&e)).unwrap();
        assert_eq!(c.target.as_str(), "http://localhost:7233/");
        assert_eq!(o.namespace, "default");
    }

    #[test]
    fn profile_file_and_selection() {
        let path = temp_file(FILE);
        let e = env(&[("TEMPORAL_CONFIG_FILE", &path)]);
        let (c, o) = load_from_config_with_env(Default::default(), Some(&e)).unwrap();
        assert_eq!(c.target.as_str(), "postgres://file@localhost/default");
        assert_eq!(o.namespace, "from-file");

        let e = env(&[
            ("TEMPORAL_CONFIG_FILE", &path),
            ("TEMPORAL_PROFILE", "other"),
        ]);
        let (c, o) = load_from_config_with_env(Default::default(), Some(&e)).unwrap();
        assert_eq!(c.target.as_str(), "postgres://file@localhost/other");
        assert_eq!(o.namespace, "default");

        // An explicit option beats TEMPORAL_PROFILE.
        let opts = LoadClientConfigProfileOptions::builder()
            .config_file_profile("default".to_string())
            .build();
        let (c, _) = load_from_config_with_env(opts, Some(&e)).unwrap();
        assert_eq!(c.target.as_str(), "postgres://file@localhost/default");

        // A missing explicit profile is an error; a missing default one is not.
        let e2 = env(&[
            ("TEMPORAL_CONFIG_FILE", &path),
            ("TEMPORAL_PROFILE", "nope"),
        ]);
        let err = load_from_config_with_env(Default::default(), Some(&e2)).unwrap_err();
        assert!(
            matches!(err, ConfigError::ProfileNotFound(ref p) if p == "nope"),
            "{err}"
        );

        // TLS in the profile is carried (and refused later at connect).
        let e3 = env(&[
            ("TEMPORAL_CONFIG_FILE", &path),
            ("TEMPORAL_PROFILE", "secure"),
        ]);
        let (c, _) = load_from_config_with_env(Default::default(), Some(&e3)).unwrap();
        assert!(c.tls_options.is_some());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn precedence_env_over_dbos_over_file() {
        let path = temp_file(FILE);
        // DBOS_SYSTEM_DATABASE_URL beats the file.
        let e = env(&[
            ("TEMPORAL_CONFIG_FILE", &path),
            ("DBOS_SYSTEM_DATABASE_URL", "postgres://dbos@h/db"),
        ]);
        let (c, o) = load_from_config_with_env(Default::default(), Some(&e)).unwrap();
        assert_eq!(c.target.as_str(), "postgres://dbos@h/db");
        assert_eq!(o.namespace, "from-file");
        // TEMPORAL_ADDRESS beats DBOS_SYSTEM_DATABASE_URL.
        let e = env(&[
            ("TEMPORAL_CONFIG_FILE", &path),
            ("DBOS_SYSTEM_DATABASE_URL", "postgres://dbos@h/db"),
            ("TEMPORAL_ADDRESS", "postgres://temporal@h/db"),
        ]);
        let (c, _) = load_from_config_with_env(Default::default(), Some(&e)).unwrap();
        assert_eq!(c.target.as_str(), "postgres://temporal@h/db");
        // With the environment disabled, only the file counts.
        let opts = LoadClientConfigProfileOptions::builder()
            .config_source(DataSource::Path(path.clone()))
            .disable_env(true)
            .build();
        let (c, _) = load_from_config_with_env(opts, Some(&e)).unwrap();
        assert_eq!(c.target.as_str(), "postgres://file@localhost/default");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn errors() {
        let opts = LoadClientConfigProfileOptions::builder()
            .disable_env(true)
            .disable_file(true)
            .build();
        assert!(matches!(
            load_from_config_with_env(opts, Some(&env(&[]))),
            Err(ConfigError::InvalidConfig(_))
        ));
        let opts = LoadClientConfigProfileOptions::builder()
            .config_source(DataSource::Data(b"[profile.default\naddress=".to_vec()))
            .build();
        assert!(matches!(
            load_from_config_with_env(opts, Some(&env(&[]))),
            Err(ConfigError::LoadError(_))
        ));
        let strict = LoadClientConfigProfileOptions::builder()
            .config_source(DataSource::Data(
                b"[profile.default]\naddress = \"postgres://a/b\"\nbogus = 1\n".to_vec(),
            ))
            .config_file_strict(true)
            .build();
        assert!(load_from_config_with_env(strict, Some(&env(&[]))).is_err());
        let e = env(&[
            ("TEMPORAL_CONFIG_FILE", "/nonexistent"),
            ("TEMPORAL_TLS_CLIENT_CERT_PATH", "/a"),
            ("TEMPORAL_TLS_CLIENT_CERT_DATA", "b"),
        ]);
        assert!(matches!(
            load_from_config_with_env(Default::default(), Some(&e)),
            Err(ConfigError::InvalidConfig(_))
        ));
    }

    #[test]
    fn env_tls_api_key_and_metadata_are_carried() {
        let e = env(&[
            ("TEMPORAL_CONFIG_FILE", "/nonexistent"),
            ("TEMPORAL_ADDRESS", "localhost:7233"),
            ("TEMPORAL_API_KEY", "k"),
            ("TEMPORAL_GRPC_META_MY_HEADER", "v"),
        ]);
        let (c, _) = load_from_config_with_env(Default::default(), Some(&e)).unwrap();
        assert_eq!(c.target.scheme(), "https");
        assert_eq!(c.api_key.as_deref(), Some("k"));
        assert!(c.tls_options.is_some());
        assert_eq!(c.headers.unwrap()["my-header"], "v");
        let e = env(&[
            ("TEMPORAL_CONFIG_FILE", "/nonexistent"),
            ("TEMPORAL_TLS", "false"),
            ("TEMPORAL_API_KEY", "k"),
        ]);
        let (c, _) = load_from_config_with_env(Default::default(), Some(&e)).unwrap();
        assert!(c.tls_options.is_none());
    }
}
