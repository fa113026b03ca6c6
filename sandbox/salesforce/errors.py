"""Salesforce's error envelope: an HTTP status and a JSON array of {message, errorCode, fields}."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: list | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []

    def as_dict(self) -> dict:
        return {"message": self.message, "errorCode": self.code, "fields": self.fields}


def not_found() -> ApiError:
    return ApiError(404, "NOT_FOUND", "The requested resource does not exist")


def malformed(message: str) -> ApiError:
    return ApiError(400, "JSON_PARSER_ERROR", message)
