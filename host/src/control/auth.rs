//! The control API's bearer token. The daemon draws a random token at start and writes it to
//! `<home>/control/<port>.token`, readable only by its user; the CLI reads it from there.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Where the token of the daemon on `port` is kept.
pub fn token_path(port: u16) -> PathBuf {
    crate::home::home()
        .join("control")
        .join(format!("{port}.token"))
}

/// Draws a new token and writes it (mode 0600, in a 0700 directory).
pub fn create_token(port: u16) -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token = crate::plugin::store::hex(&bytes);
    let path = token_path(port);
    let dir = path.parent().unwrap_or(&path);
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

/// Reads the token of the daemon on `port`.
pub fn read_token(port: u16) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(token_path(port))?.trim().to_owned())
}

/// Middleware: `Authorization: Bearer <token>` on every `/control/` request.
pub async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), app.token.as_bytes())) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
