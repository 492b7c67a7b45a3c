"""Constants of the bundle format shared by its writer and reader."""

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
