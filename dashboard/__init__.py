"""The risk-operations dashboard (`make dashboard`): a Streamlit app in front of the scoring
API. It scores through the API (API_BASE_URL, API_KEY), reads the prediction store read-only
for history and aggregates (in SQL, never whole tables in Python), and reads the registry
for the Models page. Pure logic lives in the modules here; the pages in views/."""
