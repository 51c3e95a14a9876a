"""HTTP routes: each turns a request body into one keyword-only core call and back."""
