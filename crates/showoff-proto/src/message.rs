//! Typed protocol messages. Every frame carries exactly one of these, JSON-encoded with a `type`
//! tag, so the table in `docs/protocol.md` maps one-to-one onto the variants below.

use serde::{Deserialize, Serialize};

/// What a connection to the server is for, announced in its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The long-lived control connection of a client session.
    Control,
    /// A data connection carrying one visitor stream (dial-back transport).
    Data,
}

/// Messages a client sends to the server. `Debug` prints `***` for the token and the data key
/// (frames are logged at debug level; secrets never are).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First frame of every connection: protocol version and the connection's role.
    Hello {
        /// Protocol version the client speaks.
        version: u16,
        /// What this connection is for.
        role: Role,
        /// How the session's streams travel (control connections only): `tcp` (dial-back, the
        /// default when absent), `mux` (the connection turns into a multiplexed one after
        /// `Welcome`) or `quic` (sent on the QUIC listener's control stream).
        #[serde(default, skip_serializing_if = "TransportKind::is_default")]
        transport: TransportKind,
    },
    /// Credentials, sent once right after `Hello` on a control connection.
    Auth {
        /// The client's token; empty when the server runs open.
        token: String,
    },
    /// Tunnels to open for this session, sent once after `Auth`.
    Open {
        /// One spec per tunnel; all are granted or the whole request is refused.
        tunnels: Vec<TunnelSpec>,
    },
    /// Closes one tunnel of the session and frees its name or port.
    Close {
        /// Name of the tunnel, as in [`TunnelInfo::name`].
        tunnel: String,
    },
    /// Answer to [`ServerMessage::Ping`].
    Pong,
    /// First frame after `Hello` on a data connection: which session it belongs to and, for a
    /// dial-back answer, which `Dial` it answers. Without an id the connection joins the session's
    /// warm pool and waits for a [`ServerMessage::Dial`] on itself.
    DataHello {
        /// Session id from `Welcome`.
        session: String,
        /// Data key from `Welcome`; proves the connection belongs to the session.
        key: String,
        /// The id of the `Dial` this connection answers; `None` for a warm-pool connection.
        id: Option<String>,
    },
    /// The client could not serve a `Dial`: the local target refused or the tunnel is unknown.
    /// Sent on the control connection for dialled streams, on the data connection for pooled ones.
    StreamError {
        /// The id of the `Dial`.
        id: String,
        /// Human-readable cause, e.g. `connection refused (127.0.0.1:3000)`.
        reason: String,
    },
    /// On a warm-pool data connection: the local target is connected, raw bytes follow.
    StreamReady {
        /// The id of the `Dial`.
        id: String,
    },
}

/// Messages the server sends to a client. `Debug` prints `***` for the data key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The session is up and every requested tunnel is registered.
    Welcome {
        /// Session id, quoted back in every `DataHello`.
        session: String,
        /// Secret the client presents on each data connection.
        data_key: String,
        /// Port of the data listener; the client dials it on the control connection's host.
        data_port: u16,
        /// Seconds between server pings; a client that hears nothing for three intervals
        /// treats the connection as dead.
        heartbeat_interval_secs: u64,
        /// How many idle data connections the client should keep dialled in advance.
        warm_pool: u16,
        /// One entry per granted tunnel, in request order.
        tunnels: Vec<TunnelInfo>,
        /// The transport this session runs on, as asked in `Hello`.
        #[serde(default, skip_serializing_if = "TransportKind::is_default")]
        transport: TransportKind,
        /// Every transport this server serves, for a client that may switch later.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offers: Vec<TransportKind>,
        /// UDP port of the QUIC listener, when `offers` has `quic`; on the control host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quic_port: Option<u16>,
    },
    /// The request was refused; the connection closes after this frame.
    Refused {
        /// Stable machine-readable reason.
        code: RefusedCode,
        /// What went wrong and how to fix it, for a person.
        message: String,
    },
    /// Open a stream for a visitor: dial the local target and answer with a data connection
    /// carrying `DataHello { id }` (on the control connection), or `StreamReady` / `StreamError`
    /// (on a warm-pool data connection).
    Dial {
        /// One-time id, 22 base62 characters from the OS CSPRNG.
        id: String,
        /// Name of the tunnel the visitor came in through.
        tunnel: String,
        /// The visitor's address as the server saw it.
        visitor_addr: String,
        /// W3C `traceparent` of the server's span that asked for the stream, when the server
        /// traces: the client's stream span is its child. Absent otherwise.
        /// (`Box<str>`: this message stays small, and `traceparent` is never changed.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<Box<str>>,
        /// W3C `tracestate` that goes with `traceparent`, when not empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracestate: Option<Box<str>>,
    },
    /// Heartbeat; answer with `Pong`.
    Ping,
    /// The server closed one tunnel of the session (idle timeout); its name or port is free.
    TunnelClosed {
        /// Name of the tunnel.
        tunnel: String,
        /// Why, for a person.
        reason: String,
    },
    /// The server is draining: finish what is in flight and reconnect after the given delay.
    GoAway {
        /// Why, for logs.
        reason: String,
        /// Milliseconds to wait before reconnecting.
        reconnect_after_ms: u64,
    },
}

/// What `Debug` shows in place of a secret.
const REDACTED: &str = "***";

impl std::fmt::Debug for ClientMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hello {
                version,
                role,
                transport,
            } => f
                .debug_struct("Hello")
                .field("version", version)
                .field("role", role)
                .field("transport", transport)
                .finish(),
            Self::Auth { .. } => f.debug_struct("Auth").field("token", &REDACTED).finish(),
            Self::Open { tunnels } => f.debug_struct("Open").field("tunnels", tunnels).finish(),
            Self::Close { tunnel } => f.debug_struct("Close").field("tunnel", tunnel).finish(),
            Self::Pong => f.write_str("Pong"),
            Self::DataHello { session, id, .. } => f
                .debug_struct("DataHello")
                .field("session", session)
                .field("key", &REDACTED)
                .field("id", id)
                .finish(),
            Self::StreamError { id, reason } => f
                .debug_struct("StreamError")
                .field("id", id)
                .field("reason", reason)
                .finish(),
            Self::StreamReady { id } => f.debug_struct("StreamReady").field("id", id).finish(),
        }
    }
}

impl std::fmt::Debug for ServerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Welcome {
                session,
                data_port,
                heartbeat_interval_secs,
                warm_pool,
                tunnels,
                transport,
                offers,
                quic_port,
                ..
            } => f
                .debug_struct("Welcome")
                .field("session", session)
                .field("data_key", &REDACTED)
                .field("data_port", data_port)
                .field("heartbeat_interval_secs", heartbeat_interval_secs)
                .field("warm_pool", warm_pool)
                .field("tunnels", tunnels)
                .field("transport", transport)
                .field("offers", offers)
                .field("quic_port", quic_port)
                .finish(),
            Self::Refused { code, message } => f
                .debug_struct("Refused")
                .field("code", code)
                .field("message", message)
                .finish(),
            Self::Dial {
                id,
                tunnel,
                visitor_addr,
                traceparent,
                tracestate,
            } => f
                .debug_struct("Dial")
                .field("id", id)
                .field("tunnel", tunnel)
                .field("visitor_addr", visitor_addr)
                .field("traceparent", traceparent)
                .field("tracestate", tracestate)
                .finish(),
            Self::Ping => f.write_str("Ping"),
            Self::TunnelClosed { tunnel, reason } => f
                .debug_struct("TunnelClosed")
                .field("tunnel", tunnel)
                .field("reason", reason)
                .finish(),
            Self::GoAway {
                reason,
                reconnect_after_ms,
            } => f
                .debug_struct("GoAway")
                .field("reason", reason)
                .field("reconnect_after_ms", reconnect_after_ms)
                .finish(),
        }
    }
}

impl ServerMessage {
    /// A refusal with its code and a message for a person.
    pub fn refused(code: RefusedCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` refusal.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::refused(RefusedCode::BadRequest, message)
    }
}

/// The one check of a connection's first frame, on the control and data listeners alike:
/// it must be a `Hello` of a supported version announcing `expected`. The refusal to send
/// otherwise says which versions this build speaks.
pub fn check_hello(first: Option<&ClientMessage>, expected: Role) -> Result<(), ServerMessage> {
    let Some(ClientMessage::Hello { version, role, .. }) = first else {
        return Err(ServerMessage::bad_request("expected hello"));
    };
    if !crate::SUPPORTED_VERSIONS.contains(version) {
        return Err(ServerMessage::refused(
            RefusedCode::VersionMismatch,
            format!(
                "protocol version {version} is not supported; this server speaks {:?}",
                crate::SUPPORTED_VERSIONS
            ),
        ));
    }
    if *role != expected {
        let expected = match expected {
            Role::Control => "control",
            Role::Data => "data",
        };
        return Err(ServerMessage::bad_request(format!(
            "expected role {expected}"
        )));
    }
    Ok(())
}

/// How a session's streams travel between server and client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// Dial-back: one TCP (TLS) data connection per stream, with a warm pool.
    #[default]
    Tcp,
    /// Multiplexed streams (yamux) over the control connection itself.
    Mux,
    /// One QUIC stream per tunnel stream, on the server's UDP listener.
    Quic,
    /// A transport this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl TransportKind {
    /// The name on the wire, in flags and in metrics: `tcp`, `mux`, `quic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Mux => "mux",
            Self::Quic => "quic",
            Self::Unknown => "unknown",
        }
    }

    /// True for dial-back, which the wire leaves out.
    pub fn is_default(&self) -> bool {
        *self == Self::Tcp
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable refusal codes; clients may branch on them, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedCode {
    /// The token is missing, wrong, expired or denied by policy; the message says which.
    AuthFailed,
    /// The authentication backend (decision webhook, policy engine) could not answer; retried.
    AuthUnavailable,
    /// Another principal holds the requested name.
    NameTaken,
    /// The requested name breaks the naming rules or the principal's name patterns.
    NameNotAllowed,
    /// The principal may not open tunnels of the requested kind.
    KindNotAllowed,
    /// The requested public port is in use or outside the server's range.
    PortUnavailable,
    /// A server limit (tunnels, sessions, ports) is reached.
    LimitReached,
    /// The registry that leases names and ports (a cluster's Redis) does not answer; retried.
    RegistryUnavailable,
    /// Too many connections from this address; the message says when to retry.
    RateLimited,
    /// The client speaks a protocol version the server does not.
    VersionMismatch,
    /// The frame sequence or a field is invalid.
    BadRequest,
    /// The server is draining and takes no new sessions.
    ShuttingDown,
    /// Another client with the same credentials took this session's name over; sent on the
    /// replaced session before it closes. The client stops instead of taking the name back.
    Replaced,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl RefusedCode {
    /// The code as it appears on the wire, e.g. `name_taken`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "auth_failed",
            Self::AuthUnavailable => "auth_unavailable",
            Self::NameTaken => "name_taken",
            Self::NameNotAllowed => "name_not_allowed",
            Self::KindNotAllowed => "kind_not_allowed",
            Self::PortUnavailable => "port_unavailable",
            Self::LimitReached => "limit_reached",
            Self::RegistryUnavailable => "registry_unavailable",
            Self::RateLimited => "rate_limited",
            Self::VersionMismatch => "version_mismatch",
            Self::BadRequest => "bad_request",
            Self::ShuttingDown => "shutting_down",
            Self::Replaced => "replaced",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for RefusedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of traffic a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelKind {
    /// HTTP, routed by `Host` on the public HTTP listener.
    Http,
    /// Raw TCP on a public port of its own.
    Tcp,
    /// Raw UDP on a public port of its own.
    Udp,
    /// TLS passed through unterminated, routed by SNI on the public HTTPS listener.
    Tls,
}

impl TunnelKind {
    /// Lowercase name, as on the wire and in URLs' schemes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Tls => "tls",
        }
    }
}

/// How the edge sets `Host` on requests it forwards through an HTTP tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum HostHeader {
    /// Forward the visitor's `Host` unchanged.
    #[default]
    Preserve,
    /// Replace it with the target's `host:port` (for servers that check their own name).
    Rewrite,
    /// Replace it with this exact value.
    Value(String),
}

impl From<String> for HostHeader {
    fn from(value: String) -> Self {
        match value.as_str() {
            "preserve" => Self::Preserve,
            "rewrite" => Self::Rewrite,
            _ => Self::Value(value),
        }
    }
}

impl From<HostHeader> for String {
    fn from(value: HostHeader) -> Self {
        match value {
            HostHeader::Preserve => "preserve".into(),
            HostHeader::Rewrite => "rewrite".into(),
            HostHeader::Value(v) => v,
        }
    }
}

/// The protocol an HTTP tunnel's target speaks, which decides what the server speaks over the
/// tunnel's streams: HTTP/1.1, or HTTP/2 with prior knowledge (the client wraps the stream in
/// TLS for `h2`, and for `auto` when the target is TLS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upstream {
    /// HTTP/1.1 (the default): HTTP/2 and HTTP/3 visitors are translated.
    #[default]
    Http1,
    /// HTTP/2 over plain TCP, prior knowledge (RFC 9113 §3.3).
    H2c,
    /// HTTP/2 over TLS: the client connects to a TLS target with ALPN `h2`.
    H2,
    /// Found out per tunnel: the server sends the HTTP/2 connection preface on the first stream
    /// and keeps HTTP/2 if the target answers with SETTINGS, HTTP/1.1 otherwise.
    Auto,
}

impl Upstream {
    /// The name used on the command line and in the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
            Self::H2 => "h2",
            Self::Auto => "auto",
        }
    }

    /// True for the default, which the wire leaves out.
    pub fn is_http1(&self) -> bool {
        *self == Self::Http1
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "http1" => Ok(Self::Http1),
            "h2c" => Ok(Self::H2c),
            "h2" => Ok(Self::H2),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown upstream protocol {other:?}: use http1, h2c, h2 or auto"
            )),
        }
    }
}

/// A tunnel the client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSpec {
    /// HTTP, TCP or UDP.
    pub kind: TunnelKind,
    /// Requested name (a DNS label); the server picks a readable random one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Requested public port for TCP/UDP; the server picks one from its range when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `Host` policy for HTTP tunnels.
    #[serde(default)]
    pub host_header: HostHeader,
    /// `host:port` of the local target, used by `host_header = rewrite` and shown in listings.
    #[serde(default)]
    pub target: String,
    /// Who may visit: basic auth and IP rules, enforced by the server.
    #[serde(default, skip_serializing_if = "VisitorRules::is_empty")]
    pub visitors: VisitorRules,
    /// What the target speaks (HTTP tunnels); absent is `http1`.
    #[serde(default, skip_serializing_if = "Upstream::is_http1")]
    pub upstream: Upstream,
}

/// Rules the server enforces on a tunnel's visitors before anything reaches the client.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorRules {
    /// HTTP basic auth credentials, `user:password`; visitors without them get 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<String>,
    /// CIDRs allowed to visit; empty allows everyone not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<String>,
    /// CIDRs refused (checked first); HTTP visitors get 403, TCP visitors are disconnected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_ips: Vec<String>,
}

impl VisitorRules {
    /// True when the rules let everyone in.
    pub fn is_empty(&self) -> bool {
        self.basic_auth.is_none() && self.allow_ips.is_empty() && self.deny_ips.is_empty()
    }
}

impl std::fmt::Debug for VisitorRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Frames are logged at debug level; the password never is.
        let user = self
            .basic_auth
            .as_deref()
            .map(|c| c.split(':').next().unwrap_or_default());
        f.debug_struct("VisitorRules")
            .field("basic_auth_user", &user)
            .field("allow_ips", &self.allow_ips)
            .field("deny_ips", &self.deny_ips)
            .finish()
    }
}

/// A tunnel the server granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelInfo {
    /// The tunnel's name; `Dial` and `Close` refer to it.
    pub name: String,
    /// HTTP, TCP or UDP.
    pub kind: TunnelKind,
    /// Where visitors reach it, e.g. `http://demo.localhost:8080` or `tcp://localhost:20001`.
    pub public_url: String,
    /// Public port for TCP/UDP tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// UDP tunnels: seconds a flow lives without a datagram. The server ends idle flows with a
    /// datagram `close`; the client keeps its own a little longer, in case that was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_idle_secs: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_tokens_or_keys() {
        // Issue 11, item 19: frames are logged at debug level.
        let auth = ClientMessage::Auth {
            token: "tok-hunter2".into(),
        };
        let hello = ClientMessage::DataHello {
            session: "s1".into(),
            key: "key-hunter2".into(),
            id: Some("id1".into()),
        };
        let welcome = ServerMessage::Welcome {
            session: "s1".into(),
            data_key: "key-hunter2".into(),
            data_port: 7001,
            heartbeat_interval_secs: 15,
            warm_pool: 8,
            tunnels: Vec::new(),
            transport: TransportKind::Mux,
            offers: vec![TransportKind::Tcp, TransportKind::Mux],
            quic_port: None,
        };
        let shown = format!("{auth:?} {hello:?} {welcome:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("session: \"s1\"") && shown.contains("id1"),
            "{shown}"
        );
        assert!(shown.contains("token: \"***\""), "{shown}");
        let pong = format!("{:?} {:?}", ClientMessage::Pong, ServerMessage::Ping);
        assert_eq!(pong, "Pong Ping");
    }

    #[test]
    fn the_first_frame_must_be_a_supported_hello_of_the_right_role() {
        let hello = |version, role| ClientMessage::Hello {
            version,
            role,
            transport: TransportKind::Tcp,
        };
        assert_eq!(
            check_hello(
                Some(&hello(crate::PROTOCOL_VERSION, Role::Data)),
                Role::Data
            ),
            Ok(())
        );
        let refusal = |first: Option<&ClientMessage>, role| match check_hello(first, role) {
            Err(ServerMessage::Refused { code, message }) => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        };
        let (code, message) = refusal(Some(&hello(99, Role::Control)), Role::Control);
        assert_eq!(code, RefusedCode::VersionMismatch);
        assert!(
            message.contains("99") && message.contains("[1]"),
            "{message}"
        );
        let (code, message) = refusal(Some(&hello(1, Role::Data)), Role::Control);
        assert_eq!(
            (code, message.as_str()),
            (RefusedCode::BadRequest, "expected role control")
        );
        let pong = ClientMessage::Pong;
        assert_eq!(refusal(Some(&pong), Role::Data).1, "expected hello");
        assert_eq!(refusal(None, Role::Data).1, "expected hello");
    }

    #[test]
    fn messages_round_trip_with_type_tags() {
        let msg = ClientMessage::Open {
            tunnels: vec![TunnelSpec {
                upstream: Default::default(),
                kind: TunnelKind::Http,
                name: Some("demo".into()),
                port: None,
                host_header: HostHeader::Value("example.test".into()),
                target: "127.0.0.1:3000".into(),
                visitors: Default::default(),
            }],
        };
        let json = serde_json::to_string(&msg).expect("encode");
        assert!(json.contains(r#""type":"open""#), "{json}");
        assert!(json.contains(r#""host_header":"example.test""#), "{json}");
        assert_eq!(
            serde_json::from_str::<ClientMessage>(&json).expect("decode"),
            msg
        );
    }

    #[test]
    fn host_header_keywords_and_values() {
        assert_eq!(
            HostHeader::from("preserve".to_string()),
            HostHeader::Preserve
        );
        assert_eq!(HostHeader::from("rewrite".to_string()), HostHeader::Rewrite);
        assert_eq!(
            HostHeader::from("a.test".to_string()),
            HostHeader::Value("a.test".into())
        );
    }

    #[test]
    fn unknown_refusal_codes_decode_as_unknown() {
        let json = r#"{"type":"refused","code":"brand_new_reason","message":"x"}"#;
        let msg: ServerMessage = serde_json::from_str(json).expect("decode");
        assert!(matches!(
            msg,
            ServerMessage::Refused {
                code: RefusedCode::Unknown,
                ..
            }
        ));
    }

    #[test]
    fn visitor_rules_never_print_the_password() {
        let rules = VisitorRules {
            basic_auth: Some("ann:hunter2".into()),
            ..VisitorRules::default()
        };
        let shown = format!("{rules:?}");
        assert!(
            shown.contains("ann") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn spec_defaults_fill_missing_fields() {
        let spec: TunnelSpec = serde_json::from_str(r#"{"kind":"tcp"}"#).expect("decode");
        assert_eq!(spec.host_header, HostHeader::Preserve);
        assert_eq!(spec.name, None);
        assert_eq!(spec.port, None);
    }

    #[test]
    fn the_transport_is_optional_on_the_wire_and_unknown_ones_are_named() {
        let old: ClientMessage =
            serde_json::from_str(r#"{"type":"hello","version":1,"role":"control"}"#)
                .expect("a hello without transport");
        assert!(matches!(
            old,
            ClientMessage::Hello {
                transport: TransportKind::Tcp,
                ..
            }
        ));
        let dialback = serde_json::to_string(&old).expect("encode");
        assert!(!dialback.contains("transport"), "{dialback}");
        let newer: ClientMessage = serde_json::from_str(
            r#"{"type":"hello","version":1,"role":"control","transport":"carrier-pigeon"}"#,
        )
        .expect("an unknown transport still parses");
        assert!(matches!(
            newer,
            ClientMessage::Hello {
                transport: TransportKind::Unknown,
                ..
            }
        ));
        let welcome: ServerMessage = serde_json::from_str(
            r#"{"type":"welcome","session":"s","data_key":"k","data_port":7001,
                "heartbeat_interval_secs":15,"warm_pool":8,"tunnels":[]}"#,
        )
        .expect("a welcome from an older server");
        let ServerMessage::Welcome {
            transport,
            offers,
            quic_port,
            ..
        } = welcome
        else {
            panic!("welcome");
        };
        assert_eq!(
            (transport, offers, quic_port),
            (TransportKind::Tcp, vec![], None)
        );
    }
}
