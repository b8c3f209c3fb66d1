"""`onnxlrp serve`: a local web page and JSON API that explain images with the served models (optional
extra `[serve]`: FastAPI, uvicorn, python-multipart, fastapi-offline). app.py holds the API, models.py what
is served, static/ the page (every asset bundled, the API docs' too: nothing is fetched from elsewhere)."""
