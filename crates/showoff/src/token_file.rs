//! Per-client token files: parsing, `showoff token new`, and the reload loop.
//!
//! The file stores only SHA-256 hashes of tokens, each with an id and permissions:
//!
//! ```toml
//! [[tokens]]
//! id = "alice"
//! sha256 = "…"            # showoff token new prints it
//! names = ["alice-*"]     # optional: name patterns this token may register
//! kinds = ["http"]        # optional: tunnel kinds (http, tcp)
//! max_tunnels = 5         # optional
//! ```
//!
//! The server re-reads the file when it changes (checked every two seconds) or on SIGHUP,
//! replaces its token table, and closes at once the sessions of every id that disappeared.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use showoff_proto::TunnelKind;
use showoff_server::ServerHandle;
use showoff_server::auth::{NamePattern, Principal, TokenEntry, TokenTable, token_hash};
use tokio_util::sync::CancellationToken;

use crate::settings::SettingsError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<FileToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    id: String,
    sha256: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    kinds: Vec<TunnelKind>,
    max_tunnels: Option<usize>,
}

/// Reads a token file into table entries; hashes must be 64 hex digits and ids unique.
pub fn load(path: &Path) -> Result<Vec<TokenEntry>, SettingsError> {
    crate::settings::load_by_extension(path, parse)
}

/// Parses token-file text of the given format.
pub fn parse(path: &str, ext: &str, text: &str) -> Result<Vec<TokenEntry>, SettingsError> {
    let file: TokenFile = crate::settings::parse_by_extension(path, ext, text)?;
    let invalid = |message: String| SettingsError::Parse {
        path: path.to_string(),
        format: "a token file",
        message,
    };
    let mut entries: Vec<TokenEntry> = Vec::with_capacity(file.tokens.len());
    for token in file.tokens {
        if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "token {:?}: sha256 must be 64 hex digits",
                token.id
            )));
        }
        if entries.iter().any(|e| e.principal.id == token.id) {
            return Err(invalid(format!("token id {:?} appears twice", token.id)));
        }
        entries.push(TokenEntry {
            sha256: token.sha256.to_ascii_lowercase(),
            principal: Principal {
                id: token.id,
                names: token.names.into_iter().map(NamePattern::new).collect(),
                kinds: token.kinds,
                max_tunnels: token.max_tunnels,
            },
        });
    }
    Ok(entries)
}

/// A fresh token for `showoff token new`, and the file entry that accepts it (TOML).
pub fn new_token(
    id: &str,
    names: &[String],
    kinds: &[String],
    max_tunnels: Option<usize>,
) -> (String, String) {
    let token = format!(
        "so_{}{}",
        showoff_proto::id::random_id(),
        showoff_proto::id::random_id()
    );
    let mut entry = format!(
        "[[tokens]]\nid = {id:?}\nsha256 = \"{}\"\n",
        token_hash(&token)
    );
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !names.is_empty() {
        entry.push_str(&format!("names = [{}]\n", list(names)));
    }
    if !kinds.is_empty() {
        entry.push_str(&format!("kinds = [{}]\n", list(kinds)));
    }
    if let Some(max) = max_tunnels {
        entry.push_str(&format!("max_tunnels = {max}\n"));
    }
    (token, entry)
}

/// Keeps `table` in step with the file at `path` until `stop`: reloads on change or SIGHUP,
/// and closes the sessions of revoked ids. A file that fails to parse keeps the old table.
pub async fn watch(
    path: PathBuf,
    table: TokenTable,
    server: ServerHandle,
    stop: CancellationToken,
) {
    let watched = vec![path.clone()];
    crate::watch::on_change(watched, "token file", stop, || {
        reload(&path, &table, &server)
    })
    .await;
}

fn reload(path: &Path, table: &TokenTable, server: &ServerHandle) {
    match load(path) {
        Err(error) => {
            tracing::error!(%error, "token file not reloaded; the previous tokens stay in force")
        }
        Ok(entries) => {
            let count = entries.len();
            let revoked = table.replace(entries);
            tracing::info!(
                tokens = count,
                revoked = revoked.len(),
                "token file reloaded"
            );
            for id in revoked {
                let closed = server.close_principal(&id);
                tracing::warn!(principal = %id, sessions = closed, "token revoked; its sessions were closed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_produce_an_entry_that_accepts_them() {
        let (token, entry) = new_token("alice", &["alice-*".into()], &["http".into()], Some(3));
        assert!(token.starts_with("so_") && token.len() > 40, "{token}");
        let entries = parse("t.toml", "toml", &entry).expect("the printed entry parses");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].sha256, token_hash(&token));
        let p = &entries[0].principal;
        assert_eq!((p.id.as_str(), p.max_tunnels), ("alice", Some(3)));
        assert!(p.may_use_name("alice-web") && !p.may_use_name("bob"));
        assert!(p.may_open(TunnelKind::Http) && !p.may_open(TunnelKind::Tcp));
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        let short = parse(
            "t.toml",
            "toml",
            "[[tokens]]\nid = \"a\"\nsha256 = \"abc\"\n",
        )
        .expect_err("short hash");
        assert!(short.to_string().contains("64 hex digits"), "{short}");
        let hash = token_hash("x");
        let twice = format!(
            "[[tokens]]\nid = \"a\"\nsha256 = \"{hash}\"\n[[tokens]]\nid = \"a\"\nsha256 = \"{hash}\"\n"
        );
        assert!(
            parse("t.toml", "toml", &twice)
                .expect_err("dup")
                .to_string()
                .contains("twice")
        );
        let typo =
            parse("t.toml", "toml", "[[tokens]]\nid = \"a\"\nsha265 = \"x\"\n").expect_err("typo");
        assert!(typo.to_string().contains("sha265"), "{typo}");
        assert_eq!(
            parse("t.json", "json", "{\"tokens\":[]}")
                .expect("empty")
                .len(),
            0
        );
    }
}
