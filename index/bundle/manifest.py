"""Constants of the bundle format shared by its writer and reader."""

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODALITIES = ("image", "text")
# Names of the hash functions' graph input and output: the trainers' exporters write them, the reader feeds them.
INPUT_NAME = "features"
OUTPUT_NAME = "codes"
