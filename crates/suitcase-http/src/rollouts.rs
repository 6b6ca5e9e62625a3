//! Rollouts over HTTP: `POST/GET /api/v1/rollouts`, `GET /api/v1/rollouts/<id>`,
//! `GET /api/v1/rollouts/<id>/devices` and `POST /api/v1/rollouts/<id>/{pause,resume,abort}`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use suitcase_fleet::rollout::Member;
use suitcase_fleet::{BaseUrls, Control, RolloutRequest, RolloutView};

use crate::devices::fleet;
use crate::{ApiError, AppState};

/// Rollouts listed at most.
const MAX_ROLLOUTS: usize = 1000;

pub(crate) async fn create(
    State(st): State<AppState>,
    w: Option<axum::Extension<crate::auth::Who>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let fleet = fleet(&st)?;
    let request: RolloutRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("rollout: {e}")))?;
    let urls = BaseUrls {
        coap: Some(st.coap_base(&headers)),
        http: Some(crate::esp::base_url(&st, &headers)),
    };
    let view = fleet.create_rollout(request, urls).await?;
    tracing::info!(target: "suitcase::audit", action = "rollout-create", who = %crate::auth::who(w), rollout = view.id,
        publish_id = %view.publish_id, version = view.version, devices = view.totals.devices);
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
}

pub(crate) async fn list(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<RolloutView>>, ApiError> {
    let limit = q.limit.unwrap_or(100).min(MAX_ROLLOUTS);
    Ok(Json(fleet(&st)?.rollouts(limit).await?))
}

pub(crate) async fn get_one(State(st): State<AppState>, Path(id): Path<u64>) -> Result<Json<RolloutView>, ApiError> {
    fleet(&st)?
        .rollout(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))
}

#[derive(Deserialize)]
pub(crate) struct DevicesQuery {
    limit: Option<usize>,
}

pub(crate) async fn devices(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    Query(q): Query<DevicesQuery>,
) -> Result<Json<Vec<Member>>, ApiError> {
    let fleet = fleet(&st)?;
    if fleet.rollout(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no rollout {id}")));
    }
    Ok(Json(
        fleet
            .rollout_devices(id, q.limit.unwrap_or(suitcase_fleet::MAX_LIST))
            .await?,
    ))
}

pub(crate) async fn control(
    State(st): State<AppState>,
    w: Option<axum::Extension<crate::auth::Who>>,
    Path((id, action)): Path<(u64, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    let control = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "abort" => Control::Abort,
        other => {
            return Err(ApiError::not_found(format!(
                "no rollout action {other:?}: pause, resume or abort"
            )))
        }
    };
    let view = fleet(&st)?.control_rollout(id, control).await?;
    tracing::info!(target: "suitcase::audit", action = %format!("rollout-{action}"), who = %crate::auth::who(w), rollout = id, state = %view.state);
    Ok(Json(view))
}
