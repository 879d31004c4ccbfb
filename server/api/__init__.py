"""HTTP only: routes, msgspec request/response Structs, auth guards, error mapping."""
