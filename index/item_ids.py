"""The rule for an item id, shared by the API's schemas and the bulk import: 1 to 256 characters, no
whitespace (an id is a URL path segment of the API, and the first newline of a stored entry ends it)."""

ID_MAX_CHARS = 256
ID_PATTERN = r"^[^\s]+$"
