//! The body type of the request-level edge ([`super::request`]): requests and responses of
//! HTTP/2 and HTTP/3 visitors and of HTTP/2 targets, boxed, with any error.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// Any error a body passes on.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every request and response of the request-level edge.
pub(crate) type Body = BoxBody<Bytes, BoxError>;
