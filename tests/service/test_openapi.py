"""The OpenAPI document says what the service does: the job spec's own schema as the body, the
error shape on every failing status, timezone-aware timestamps, and /metrics as text."""

from service.core.config import Settings
from service.main import create_app
from trainer.spec import JobSpec


def test_the_document_carries_the_spec_the_errors_and_metrics_as_text(tmp_path):
    doc = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")).openapi()
    schemas = doc["components"]["schemas"]
    for path in ("/v1/jobs", "/v1/jobs:validate"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/JobSpec"}
    assert set(schemas["JobSpec"]["properties"]) == set(JobSpec.model_fields)
    assert "learner.lr" not in str(schemas["JobSpec"]) and schemas["LearnerSpec"]["properties"]["lr"]["maximum"] == 1
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if path in ("/healthz", "/readyz", "/metrics"):
                continue
            for status in ("401", "422"):
                content = operation["responses"][status]["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    created = schemas["JobOut"]["properties"]["created_at"]
    assert created["format"] == "date-time"
