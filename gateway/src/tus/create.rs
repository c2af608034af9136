//! tus creation (`POST /tus/`): a FILE SAVE under the name-clash rule
//! (`clash.rs`), and creation-with-upload.

use super::*;

/// `POST /tus/`: a FILE SAVE for `Upload-Length` bytes under the
/// `filename` of `Upload-Metadata` (else a fresh uuid); with a body, its
/// bytes are written at offset 0 (creation-with-upload).
pub async fn create(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    require_version(&headers)?;
    let on_clash = ClashQuery::from_query(uri.query())?.choice(OnClash::Refuse)?;
    if headers.contains_key(&UPLOAD_DEFER_LENGTH) {
        return Err(GatewayError::BadRequest(
            "Upload-Defer-Length is not supported: send Upload-Length".into(),
        ));
    }
    let size = u64_header(&headers, &UPLOAD_LENGTH)?
        .ok_or_else(|| GatewayError::BadRequest("Upload-Length is required".into()))?;
    crate::upload::check_size(&st, size)?;
    let with_upload = has_body(&headers);
    if with_upload && !content_type_is_offset_stream(&headers) {
        return Err(GatewayError::UnsupportedMediaType(format!(
            "a body sent with the creation must be {OFFSET_STREAM}"
        )));
    }
    let sum = checksum(&headers)?;
    let key = filename(&headers)?.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (token, r, expiry, tp) = begin_as(&st, &auth, &key, size, on_clash).await?;
    info!(key = %r.key, size, "tus upload created");
    let mut offset = if r.upload_id.is_none() { size } else { 0 };
    let mut failure = None;
    if with_upload && r.upload_id.is_some() {
        let slot = st.tus.lock(&auth.user, &r).await?;
        let found = Found::Open {
            prefix: 0,
            tp,
            expiry,
            last_active: 0,
        };
        match spawn_write(&st, token, r.clone(), slot, found, 0, sum, body).await {
            Ok(p) => offset = p.offset,
            // The upload exists: its URL goes back with the error's status
            // so the client can resume it.
            Err(e) => failure = Some(e),
        }
    }
    let mut resp = match failure {
        Some(e) => e.into_response(),
        None => StatusCode::CREATED.into_response(),
    };
    set(&mut resp, header::LOCATION, r.location());
    // The key it got (a renaming upload's free name), as HEAD says it.
    set(
        &mut resp,
        UPLOAD_METADATA,
        format!("filename {}", STANDARD.encode(r.key.as_bytes())),
    );
    set(&mut resp, UPLOAD_OFFSET, offset);
    set(&mut resp, STEP_BLOCK_SIZE, r.block_size);
    if offset < size {
        expires(&mut resp, expiry);
    }
    Ok(resp)
}

/// What [`begin`] gives: the token that worked, the upload's URL, the
/// server's upload expiry, and the transfer settings for its blocks.
type Begun = (String, UploadRef, Option<u64>, TransferPlan);

/// [`begin`] as the request's clash choice says (see `clash.rs`): a
/// renaming upload takes the first free name, and the next one when
/// another upload took that name meanwhile.
async fn begin_as(
    st: &Arc<AppState>,
    auth: &Auth,
    key: &str,
    size: u64,
    on_clash: OnClash,
) -> Result<Begun, GatewayError> {
    let attempt = |name: String, replace: bool| {
        st.with_token(auth, move |t| {
            let (st, name) = (Arc::clone(st), name.clone());
            async move {
                let (r, expiry, tp) = begin(&st, &t, name, size, replace).await?;
                Ok((t, r, expiry, tp))
            }
        })
    };
    if on_clash == OnClash::Rename {
        return crate::clash::with_free_name(st, auth, key, |name| attempt(name, false)).await;
    }
    let replace = on_clash == OnClash::Replace;
    attempt(key.to_owned(), replace)
        .await
        .map_err(|e| crate::clash::explain(e, key))
}

/// SAVE a new upload (replacing the key's file when it completes, with
/// `replace` and a server that can); its URL, the server's upload expiry,
/// and the transfer settings for its blocks.
async fn begin(
    st: &AppState,
    token: &str,
    key: String,
    size: u64,
    replace: bool,
) -> Result<(UploadRef, Option<u64>, TransferPlan), GatewayError> {
    let mut conn = st.backend.conn(token).await?;
    let caps = conn.capabilities();
    if !caps.resume {
        return Err(no_resume());
    }
    if let Some(max) = caps.max_file_size
        && size > max
    {
        return Err(GatewayError::TooLarge(format!(
            "{size} bytes exceeds the STEP server's maximum file size of {max} bytes"
        )));
    }
    let tp = st.backend.plan_for(&conn);
    let opts = SaveOptions {
        block_size: tp.block_size,
        resume: false,
    };
    // Without the server's replace extension a replace is a plain SAVE: an
    // existing key is refused, as for PUT.
    let saved = if replace && caps.replace {
        conn.file_save_replace(&key, size, opts, None).await
    } else {
        conn.file_save(Some(&key), size, opts).await
    };
    let plan = saved.map_err(|e| st.backend.step_error(e))?;
    if plan.upload_id.is_none() && size > 0 {
        return Err(no_resume());
    }
    let r = UploadRef {
        key: plan.key,
        upload_id: plan.upload_id,
        size,
        block_size: plan.block_size.max(1),
    };
    Ok((r, caps.upload_expiry, tp))
}
