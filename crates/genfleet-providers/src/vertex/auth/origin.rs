//! Where tokens come from: the token file and the metadata-style endpoint,
//! and how their failures are classified.

use super::*;

pub(super) async fn read_token_file(path: &Path) -> Result<Fetched, ProviderError> {
    let shown = path.display();
    let unauthorized = |detail: String| ProviderError::Unauthorized {
        message: format!("vertex token file {shown} {detail}"),
    };
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|err| unauthorized(format!("cannot be read: {err}")))?;
    if meta.len() > TOKEN_FILE_LIMIT {
        return Err(unauthorized(format!(
            "is {} bytes, expected at most {TOKEN_FILE_LIMIT}",
            meta.len()
        )));
    }
    let stamp = FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    };
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|err| unauthorized(format!("cannot be read: {err}")))?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| unauthorized("is not utf-8 text".to_owned()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(unauthorized(
            "is empty, expected an access token".to_owned(),
        ));
    }
    let authorization = bearer(token)
        .ok_or_else(|| unauthorized("holds characters not allowed in an http header".to_owned()))?;
    Ok(Fetched {
        authorization,
        refresh_at: Instant::now() + FILE_REREAD_INTERVAL,
        stamp: Some(stamp),
    })
}

/// The metadata server's answer.
#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    token_type: Option<String>,
}

pub(super) async fn fetch_from_endpoint(
    client: &reqwest::Client,
    url: &Url,
    timeout: Duration,
    deadline: Option<Instant>,
) -> Result<Fetched, ProviderError> {
    let builder = client.get(url.clone()).header("Metadata-Flavor", "Google");
    let response = http::send(builder, timeout, deadline)
        .await
        .map_err(in_token_request)?;
    let status = response.status();
    if !status.is_success() {
        let message = format!("token endpoint answered HTTP {}", status.as_u16());
        return Err(match status.as_u16() {
            408 | 429 | 500..=599 => ProviderError::Unavailable {
                message,
                retry_after: http::retry_after_header(response.headers()),
            },
            // A 4xx (no such service account, missing scope, a wrong URL):
            // asking again will not help.
            _ => ProviderError::Unauthorized { message },
        });
    }
    // serde's messages quote a value only where its type is wrong; the
    // token is a string where a string is expected, so it is never quoted.
    let answer: TokenAnswer = http::read_json(
        response,
        CONTROL_BODY_LIMIT,
        deadline,
        "token endpoint answer",
    )
    .await
    .map_err(in_token_request)?;
    if let Some(kind) = &answer.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(ProviderError::Malformed {
                message: format!(
                    "token endpoint answered token_type {:?}, expected \"Bearer\"",
                    http::truncate(kind, 32)
                ),
            });
        }
    }
    let authorization = bearer(answer.access_token.trim()).ok_or_else(|| {
        ProviderError::Malformed {
            message: "token endpoint answered an access_token that is empty or not fit for an http header"
                .to_owned(),
        }
    })?;
    Ok(Fetched {
        authorization,
        refresh_at: refresh_at(Instant::now(), Duration::from_secs(answer.expires_in)),
        stamp: None,
    })
}

/// When to refresh a token that expires in `expires_in` from `now`: 60 s
/// before it expires, or halfway through its life when that is 2 minutes or
/// less (a margin of 60 s would leave no time to use it). A life over
/// [`MAX_TOKEN_LIFE`] counts as that.
pub(crate) fn refresh_at(now: Instant, expires_in: Duration) -> Instant {
    let expires_in = expires_in.min(MAX_TOKEN_LIFE);
    let keep = if expires_in > EXPIRY_MARGIN * 2 {
        expires_in - EXPIRY_MARGIN
    } else {
        expires_in / 2
    };
    crate::hint::after(now, keep)
}

/// Marks a transport or body failure as the token request's, not Vertex's.
pub(super) fn in_token_request(err: ProviderError) -> ProviderError {
    const PREFIX: &str = "token endpoint";
    let mark = |message: String| {
        if message.starts_with(PREFIX) {
            message
        } else {
            format!("{PREFIX}: {message}")
        }
    };
    match err {
        ProviderError::Unavailable {
            message,
            retry_after,
        } => ProviderError::Unavailable {
            message: mark(message),
            retry_after,
        },
        ProviderError::Malformed { message } => ProviderError::Malformed {
            message: mark(message),
        },
        other => other,
    }
}
