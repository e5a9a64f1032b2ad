"""``POST /v1/ai/feedback``: the caller rates one of their finished tasks (FlexStack's submit_feedback)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from soundry.api.flexstack.schemas import Feedback
from soundry.api.flexstack.tasks import parse_json_body
from soundry.api.http.auth import current_user, services
from soundry.api.http.docs import FeedbackStored, answers
from soundry.api.http.envelope import ApiError, ok
from soundry.tasks.models import FINAL_STATUSES, RATING_RANGE, User
from soundry.tasks.result import fmt_time

router = APIRouter(prefix="/v1", tags=["audio generation"])


@router.post("/ai/feedback", summary="Rate one of your finished tasks",
             description=f"Body `{{\"task_id\", \"rating\", \"feedback\"}}`: `rating` from {RATING_RANGE[0]:g} "
                         f"(worst) to {RATING_RANGE[1]:g} (best), fractions allowed; `feedback` free text (optional). "
                         "Stored with the task (a later call replaces it), shown in the task's result and history "
                         "(`feedback`), counted in /metrics (`soundry_task_rating`). Another user's task answers 404; "
                         "a task that has not finished answers 409.",
             responses=answers(FeedbackStored, 200, 400, 401, 404, 409, 413, 422, 429),
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": Feedback.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def submit_feedback(request: Request, user: User = Depends(current_user)):
    body = await parse_json_body(request, Feedback)
    store = services(request).store
    task = store.get(body.task_id, user.id)
    if task is None:
        raise ApiError(404, "not_found", f"no task {body.task_id} for this user")
    if task.status not in FINAL_STATUSES:
        raise ApiError(409, "not_finished", f"task {task.id} is {task.status}; rate it once it has finished")
    task = store.set_feedback(task.id, user.id, body.rating, body.feedback)
    if task is None:  # deleted in between
        raise ApiError(404, "not_found", f"no task {body.task_id} for this user")
    return ok(request, {"task_id": task.id, "rating": task.rating, "feedback": task.feedback,
                        "rated_at": fmt_time(task.rated_at)})
