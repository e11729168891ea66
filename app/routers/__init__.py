"""HTTP routers; each stays thin and delegates to the service modules in app/."""
