"""Reading an X-ray from a request: multipart (`image` file, optional `title`) or a raw
image body. The bytes' format is judged later by decode, from their content."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import UploadFile

from server.api.errors import ApiError
from server.files import is_no_space

RAW_TYPES = ("image/png", "image/jpeg", "application/dicom", "application/octet-stream")


async def read_upload(request: Request) -> tuple[bytes, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form()  # a file part over 1 MiB is spooled to a temp file
        except OSError as exc:
            if not is_no_space(exc):
                raise
            raise ApiError(
                507,
                "storage_full",
                "no room left on this server to receive the upload; retry later, or send "
                "the image as the raw body (Content-Type image/png, image/jpeg, ...)",
            ) from None
        # One of each: a second image or title is refused, not silently dropped.
        images, titles = form.getall("image", []), form.getall("title", [])
        image = images[0] if len(images) == 1 else None
        title = titles[0] if titles else ""
        if not isinstance(image, UploadFile):
            raise ApiError(
                400, "missing_image", "the multipart form needs one file field named 'image'"
            )
        if len(titles) > 1 or not isinstance(title, str) or len(title) > 200:
            raise ApiError(
                400, "invalid_title", "title must be one text field of at most 200 characters"
            )
        return await image.read(), title.strip()
    if content_type in RAW_TYPES:
        title = request.query_params.get("title", "")
        return await request.body(), title.strip()[:200]
    raise ApiError(
        415,
        "unsupported_media_type",
        "send multipart/form-data with an 'image' file, or the image itself as the body "
        f"with Content-Type one of {', '.join(RAW_TYPES)}",
    )
