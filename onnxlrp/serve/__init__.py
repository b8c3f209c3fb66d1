"""`onnxlrp serve`: a local web page and JSON API that explain images with the served models (optional
extra `[serve]`: FastAPI, uvicorn, python-multipart). app.py holds the API, models.py what is served,
static/ the page (every asset bundled: nothing is fetched from elsewhere)."""
