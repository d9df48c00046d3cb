//! Entry points for the fuzz targets `config_file` and `client_file` (feature `fuzzing`): the
//! first byte picks the format (TOML, YAML, JSON), the rest is the file's text, read by the
//! same parsers `--config` and `showoff client -c` use. Bad text must give an error, never a
//! panic; a server file that parses must resolve through the settings layer or say which
//! setting is wrong, and its description must name every setting.

use std::collections::{BTreeMap, HashMap};

use crate::settings::{self, SERVER_SETTINGS};

fn split(data: &[u8]) -> Option<(&'static str, String)> {
    let (&format, text) = data.split_first()?;
    let ext = ["toml", "yaml", "json"][usize::from(format % 3)];
    Some((ext, String::from_utf8_lossy(text).into_owned()))
}

/// A server config file through the settings layer.
pub fn config_file(data: &[u8]) {
    let Some((ext, text)) = split(data) else {
        return;
    };
    let Ok(file) = settings::parse_file_text(&format!("fuzz.{ext}"), ext, &text) else {
        return;
    };
    if let Ok(resolved) = settings::resolve(&BTreeMap::new(), &HashMap::new(), &file) {
        let described = settings::describe(&resolved.values);
        assert_eq!(described.lines().count(), SERVER_SETTINGS.len());
    }
}

/// A client config file.
pub fn client_file(data: &[u8]) {
    let Some((ext, text)) = split(data) else {
        return;
    };
    if let Ok(file) = crate::client_file::parse(&format!("fuzz.{ext}"), ext, &text) {
        assert!(
            !file.tunnels.is_empty(),
            "a client file without tunnels was accepted"
        );
        let _ = file.globals();
    }
}
