"""The OptimizedModel API (pydantic models are the single source of the CRD) and the job contract."""
