//! The device inventory over HTTP: `GET/POST /api/v1/devices`, `GET/DELETE
//! /api/v1/devices/<id>`, `POST /api/v1/devices/<id>/report` and `GET /api/v1/fleet`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use suitcase_fleet::{Device, Filter, Fleet, FleetError, NewDevice, Reporter, State as DeviceState};

use crate::{ApiError, AppState};

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Invalid(m) => ApiError::bad_request(m),
            FleetError::NotFound(_) | FleetError::NoRollout(_) => ApiError::not_found(e.to_string()),
            FleetError::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            FleetError::Full(m) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, m),
            FleetError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            FleetError::Database(_) | FleetError::Stopped => ApiError::internal(e),
        }
    }
}

pub(crate) fn fleet(st: &AppState) -> Result<&Fleet, ApiError> {
    st.fleet.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "device tracking is off (--no-tracking)",
        )
    })
}

/// A device as the API shows it: the stored record and its progress.
#[derive(Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    device: Device,
    /// Download progress in percent, while there is a download.
    progress: Option<u8>,
}

impl From<Device> for DeviceView {
    fn from(device: Device) -> Self {
        DeviceView {
            progress: device.progress(),
            device,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    group: Option<String>,
    state: Option<String>,
    publish_id: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let fleet = fleet(&st)?;
    let filter = Filter {
        group: q.group.filter(|g| !g.is_empty()),
        state: match q.state.as_deref() {
            None | Some("") => None,
            Some(s) => Some(s.parse::<DeviceState>()?),
        },
        publish_id: q.publish_id.filter(|p| !p.is_empty()),
    };
    let devices = fleet.list(&filter, q.limit.unwrap_or(suitcase_fleet::MAX_LIST)).await?;
    Ok(Json(devices.into_iter().map(DeviceView::from).collect()))
}

pub(crate) async fn get_one(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<DeviceView>, ApiError> {
    match fleet(&st)?.get(&id).await? {
        Some(d) => Ok(Json(d.into())),
        None => Err(ApiError::not_found(format!("no device {id:?}"))),
    }
}

pub(crate) async fn remove(
    State(st): State<AppState>,
    who: Option<axum::Extension<crate::auth::Who>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = crate::auth::who(who);
    if fleet(&st)?.remove(&id).await? {
        tracing::info!(target: "suitcase::audit", action = "device-remove", who = %who, device = %id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no device {id:?}")))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(NewDevice),
    Many(Vec<NewDevice>),
}

#[derive(Deserialize)]
pub(crate) struct AddQuery {
    /// Update devices that exist (an import) instead of refusing them.
    #[serde(default)]
    replace: bool,
}

/// Most devices one request adds.
const MAX_ADD: usize = 100_000;

pub(crate) async fn add(
    State(st): State<AppState>,
    who: Option<axum::Extension<crate::auth::Who>>,
    Query(q): Query<AddQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Vec<DeviceView>>), ApiError> {
    let fleet = fleet(&st)?;
    let parsed: OneOrMany = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected a device object or an array of them: {e}")))?;
    let devices = match parsed {
        OneOrMany::One(d) => vec![d],
        OneOrMany::Many(v) => v,
    };
    if devices.len() > MAX_ADD {
        return Err(ApiError::bad_request(format!("at most {MAX_ADD} devices per request")));
    }
    let added = fleet.add(devices, q.replace).await?;
    let who = crate::auth::who(who);
    // One line per device; a large import is one line (the log is not the inventory).
    if added.len() <= 100 {
        for d in &added {
            tracing::info!(target: "suitcase::audit", action = "device-add", who = %who, device = %d.id, replace = q.replace);
        }
    } else {
        tracing::info!(target: "suitcase::audit", action = "device-import", who = %who, devices = added.len(), replace = q.replace);
    }
    Ok((
        StatusCode::CREATED,
        Json(added.into_iter().map(DeviceView::from).collect()),
    ))
}

/// The Content-Format equivalent of a media type.
fn content_format(headers: &HeaderMap) -> Option<u16> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next()?.trim();
    match ct {
        "application/json" => Some(50),
        "application/cbor" => Some(60),
        _ => None,
    }
}

pub(crate) async fn report(
    State(st): State<AppState>,
    peer: crate::download::Peer,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<DeviceView>, ApiError> {
    let fleet = fleet(&st)?;
    suitcase_fleet::validate_id(&id)?;
    // A device token speaks for its own device only: the one with its name as id or HTTP
    // identity. (Publisher tokens speak for any; with no device token at all, reports are
    // as open as downloads.)
    if let Some(name) = &peer.token {
        let own = name == &id
            || fleet
                .get(&id)
                .await?
                .is_some_and(|d| d.http_id.as_deref() == Some(name.as_str()));
        if !own {
            tracing::warn!(target: "suitcase::audit", device = %id, token = %name, "report refused: another device's token");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("device token {name:?} may report only for its own device"),
            ));
        }
    }
    let report = suitcase_fleet::report::parse(content_format(&headers), &body).map_err(FleetError::from)?;
    let d = fleet.report(Reporter::Id(id), report).await?;
    Ok(Json(d.into()))
}

#[derive(Serialize)]
struct FleetView {
    backend: &'static str,
    states: std::collections::BTreeMap<String, i64>,
    counters: suitcase_fleet::CountersView,
}

pub(crate) async fn summary(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let fleet = fleet(&st)?;
    let states = fleet.counts().await?.into_iter().collect();
    Ok(Json(FleetView {
        backend: match fleet.backend() {
            suitcase_fleet::Backend::Sqlite => "sqlite",
            suitcase_fleet::Backend::Postgres => "postgres",
        },
        states,
        counters: fleet.counters(),
    }))
}
