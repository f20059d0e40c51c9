"""datasets: what is on disk before anything is computed. Benchmark folder layouts
(University-1652, SUES-200, a plain folder) read into sorted per-view listings (`ViewListing`:
ids, labels, query/gallery flags), the locations' coordinates (`locations.csv`), georeferenced
maps (GeoTIFF/VRT files, their working grids in metres, the tiles cut from them: positions via
pyproj, no pixel read; or a folder of web tiles, bounds from morecantile), drone photos for a map (`photos.csv`), and the generated demo scenes (a
satellite tile and oblique drone views per location).

May import: config.
"""

from ..faces import face

IMPORTS = ("config",)
__getattr__, __dir__, __all__ = face(__name__, {
    "layouts": ("DatasetLayoutError", "IMAGE_EXTENSIONS", "ViewListing", "list_dataset", "list_folder",
                "list_sues200", "list_university1652", "resolve_data_root"),
    "coordinates": ("CoordinatesError", "coordinates_for", "location_of", "read_locations_csv"),
    "maps": ("GDAL_CACHE_MB", "MAP_EXTENSIONS", "bounded_gdal_cache", "MIN_TILE_PX", "MapError", "MapFile", "TileTable", "cut_tiles",
             "from_latlon", "map_fingerprint", "map_paths", "short_crs", "open_map", "open_map_file", "pixel_to_crs",
             "to_latlon", "utm_crs_for"),
    "web_tiles": ("WEB_TILE_EXTENSIONS", "find_web_tiles", "is_web_tile_folder", "web_tile_map",
                  "web_tiles_fingerprint"),
    "photos": ("PHOTOS_CSV", "check_inside", "exif_position", "inside_any", "list_photos", "read_photos_csv"),
    "demo_map": ("camera_rays", "generate_demo_map", "ground_points", "render_landscape", "render_photo"),
    "demo_scenes": ("default_demo_root", "demo_coordinates", "generate_demo", "render_drone_view"),
})
