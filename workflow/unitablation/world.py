"""A procedural image world whose colour, shape, part, texture and scene labels are known per pixel.

Images are small "scenes": a textured background with a few large main objects chosen by the
class recipe, some small random distractors and Gaussian noise. Everything is rasterised
geometrically (signed distances on a coordinate grid in units of the image side), so the same
scene is drawn at image resolution (anti-aliased) and at segmentation resolution (half the image
size, hard labels) consistently.

Label conventions of `Scene`: `color` holds colour index + 1, `object_layers` shape index + 1,
`part_layers` part index + 1 (part i is the rim of shape i), 0 meaning "none"; `texture` and
`scene` are 0-based indices into `TEXTURES` and the class table.

Class names are chosen to sort alphabetically in recipe order, so `class_names(spec)` equals its
sorted order and torchvision's ImageFolder assigns class index i to the i-th name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "hexagon",
)
PARTS: tuple[str, ...] = tuple(f"{shape} rim" for shape in SHAPES)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "brown": (130, 80, 35),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots", "waves", "grid", "zigzag")

PALETTE = np.array([COLORS[name] for name in COLOR_NAMES], dtype=np.float32)
_LUMA = PALETTE @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Texture shade of each colour: lighter for dark colours, darker for light ones.
SHADES = np.where((_LUMA < 110)[:, None], PALETTE + 0.32 * (255 - PALETTE), PALETTE * 0.72).astype(
    np.float32
)

SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "concept": 2}
MAIN_SCALE = (0.18, 0.35)  # main object diameter, in units of the image side
DISTRACTOR_SCALE = (0.08, 0.14)
TEXTURE_PERIOD = (0.11, 0.19)  # texture period, in units of the image side
RIM_WIDTH = 1.5  # rim band width inside an object's boundary, in segmentation pixels


@dataclass(frozen=True)
class Recipe:
    """How one scene class is drawn: texture, background colours, main shapes and colours."""

    name: str
    textures: tuple[str, ...]
    backgrounds: tuple[str, ...]
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    count: tuple[int, int]  # inclusive range of main objects


def _r(name: str, tex: str, bg: str, shapes: str, colors: str, count: tuple[int, int]) -> Recipe:
    """Build a recipe from space-separated option lists (keeps the table readable)."""
    return Recipe(
        name,
        tuple(tex.split()),
        tuple(bg.split()),
        tuple(shapes.split()),
        tuple(colors.split()),
        count,
    )


# Each texture and each shape serves at least two classes; every (texture, main shape) pair
# belongs to exactly one class, and classes sharing a texture or shape differ in colours.
RECIPES: tuple[Recipe, ...] = (
    _r("alley", "stripes", "black brown", "square", "yellow orange", (1, 2)),
    _r("beach", "dots", "yellow white", "circle", "blue red", (1, 3)),
    _r("canyon", "zigzag", "orange brown", "triangle", "white black", (1, 2)),
    _r("desert", "waves", "yellow", "diamond", "brown green", (1, 3)),
    _r("estuary", "waves", "blue", "ring", "white yellow", (1, 2)),
    _r("forest", "stripes", "green", "star", "brown red", (1, 3)),
    _r("garden", "dots", "green pink", "hexagon", "purple yellow", (1, 3)),
    _r("harbor", "grid", "blue white", "cross", "red orange", (1, 2)),
    _r("island", "checker", "yellow orange", "circle ring", "green purple", (1, 2)),
    _r("jungle", "zigzag", "green black", "diamond star", "orange pink", (1, 3)),
    _r("kitchen", "checker", "white red", "cross hexagon", "blue black", (1, 2)),
    _r("lagoon", "grid", "pink orange", "triangle square", "green blue", (1, 2)),
    _r("meadow", "dots", "green", "diamond", "white red", (1, 3)),
    _r("nursery", "stripes", "pink white", "circle ring", "blue purple", (1, 2)),
    _r("orchard", "grid", "green brown", "circle", "red orange", (2, 3)),
    _r("pasture", "waves", "green yellow", "hexagon square", "white black", (1, 2)),
)


@dataclass(frozen=True)
class WorldSpec:
    """Size, class count, split sizes, noise and seed of a generated world."""

    image_size: int = 64
    n_classes: int = 12
    train_per_class: int = 200
    val_per_class: int = 50
    concept_images: int = 400
    noise: float = 0.04
    max_distractors: int = 2
    seed: int = 0

    @property
    def seg_size(self) -> int:
        """Side of the segmentation label maps (half the image side)."""
        return self.image_size // 2

    def validate(self) -> WorldSpec:
        """Raise ValueError naming the first bad field; return self so calls can be chained."""
        if self.image_size < 16 or self.image_size % 2:
            raise ValueError(f"image_size must be even and >= 16, got {self.image_size}")
        if not 2 <= self.n_classes <= len(RECIPES):
            raise ValueError(f"n_classes must be in 2..{len(RECIPES)}, got {self.n_classes}")
        for name in ("train_per_class", "val_per_class", "concept_images"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.noise >= 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.max_distractors < 0:
            raise ValueError(f"max_distractors must be >= 0, got {self.max_distractors}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        return self


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object: shape and colour indices, centre and radius (image-side units), angle."""

    shape: int
    color: int
    cx: float
    cy: float
    radius: float
    angle: float
    main: bool


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered image with its class and its concept labels at segmentation resolution."""

    image: np.ndarray  # (H, W, 3) uint8
    class_index: int
    color: np.ndarray  # (H/2, W/2) int32, colour index + 1
    object_layers: list[np.ndarray]  # each (H/2, W/2) int32, shape index + 1; layer 0 on top
    part_layers: list[np.ndarray]  # each (H/2, W/2) int32, part index + 1
    texture: int
    scene: int
    background: int = 0  # background colour index
    objects: tuple[PlacedObject, ...] = field(default=())  # in drawing order, bottom first


def class_names(spec: WorldSpec) -> list[str]:
    """Scene class names in class-index order (also their sorted order, as ImageFolder needs)."""
    return [recipe.name for recipe in RECIPES[: spec.validate().n_classes]]


def split_size(spec: WorldSpec, split: str, n_per_class: int | None = None) -> int:
    """Number of scenes `generate_split` yields for these arguments."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_CODES)}")
    if n_per_class is not None:
        return n_per_class * spec.n_classes
    if split == "concept":
        return spec.concept_images
    return spec.n_classes * (spec.train_per_class if split == "train" else spec.val_per_class)


def scene_rng(
    spec: WorldSpec, split: str, class_index: int, index_in_class: int
) -> np.random.Generator:
    """Random generator of one scene, keyed by (seed, split, class, index) and nothing else."""
    seq = np.random.SeedSequence(
        [spec.seed, SPLIT_CODES[split]], spawn_key=(class_index, index_in_class)
    )
    return np.random.default_rng(seq)


def generate_split(spec: WorldSpec, split: str, n_per_class: int | None = None) -> Iterator[Scene]:
    """Yield the scenes of a split, cycling through classes; scene k is class k % n_classes.

    `n_per_class` defaults to the spec's train/val size; for "concept" the default is
    `spec.concept_images` scenes in total. Each scene depends only on (seed, split, class,
    index within class), never on how many scenes are generated.
    """
    spec.validate()
    total = split_size(spec, split, n_per_class)
    for k in range(total):
        class_index, index_in_class = k % spec.n_classes, k // spec.n_classes
        yield render_scene(scene_rng(spec, split, class_index, index_in_class), class_index, spec)


# ---------------------------------------------------------------------------------------------
# Geometry: signed distances (negative inside) of shapes centred at the origin, radius r.


def _box(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """Signed distance to an axis-aligned rectangle with half-sizes (a, b)."""
    qx, qy = np.abs(x) - a, np.abs(y) - b
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _polygon(x: np.ndarray, y: np.ndarray, sides: int, apothem: float, phase: float) -> np.ndarray:
    """Signed distance (exact inside) to a regular convex polygon, as the max of half-planes."""
    angles = phase + 2 * np.pi * np.arange(sides) / sides
    d = x * np.cos(angles[0]) + y * np.sin(angles[0])
    for a in angles[1:]:
        d = np.maximum(d, x * np.cos(a) + y * np.sin(a))
    return d - apothem


def _star(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (approximate outside) to a five-pointed star with a tip on +x."""
    outer, inner, sector = 1.2 * r, 0.5 * r, 2 * np.pi / 5
    theta = np.abs(np.mod(np.arctan2(y, x) + sector / 2, sector) - sector / 2)
    rho = np.hypot(x, y)
    qx, qy = rho * np.cos(theta), rho * np.sin(theta)
    vx, vy = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    nx, ny = vy, outer - vx  # normal of the tip->valley edge, pointing away from the centre
    norm = np.hypot(nx, ny)
    return ((qx - outer) * nx + qy * ny) / norm


def shape_sdf(shape: int, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance of shape `shape` (index into SHAPES) with radius r at local coordinates."""
    name = SHAPES[shape]
    if name == "circle":
        return np.hypot(x, y) - r
    if name == "square":
        return _box(x, y, 0.8 * r, 0.8 * r)
    if name == "triangle":
        return _polygon(x, y, 3, 0.6 * r, np.pi / 2)
    if name == "star":
        return _star(x, y, r)
    if name == "cross":
        return np.minimum(_box(x, y, r, 0.34 * r), _box(x, y, 0.34 * r, r))
    if name == "ring":
        return np.abs(np.hypot(x, y) - 0.76 * r) - 0.24 * r
    if name == "diamond":
        a, b = 1.1 * r, 0.62 * r
        return (np.abs(x) * b + np.abs(y) * a - a * b) / np.hypot(a, b)
    if name == "hexagon":
        return _polygon(x, y, 6, 0.85 * r, 0.0)
    raise ValueError(f"unknown shape index {shape}")


def _object_window(obj: PlacedObject, n: int) -> tuple[slice, slice, np.ndarray]:
    """Signed distance of an object on the n x n pixel grid, restricted to its bounding box.

    Returns (rows, cols, distances in units of the image side) for that window.
    """
    extent = 1.3 * obj.radius + 2.0 / n
    lo_x, hi_x = _pixel_range(obj.cx - extent, obj.cx + extent, n)
    lo_y, hi_y = _pixel_range(obj.cy - extent, obj.cy + extent, n)
    xs = (np.arange(lo_x, hi_x, dtype=np.float32) + 0.5) / n - obj.cx
    ys = (np.arange(lo_y, hi_y, dtype=np.float32) + 0.5) / n - obj.cy
    c, s = np.cos(obj.angle), np.sin(obj.angle)
    # Rotate the grid by -angle into the object's frame.
    x = xs[None, :] * c + ys[:, None] * s
    y = -xs[None, :] * s + ys[:, None] * c
    d = shape_sdf(obj.shape, x, y, obj.radius)
    return slice(lo_y, hi_y), slice(lo_x, hi_x), d


def _pixel_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixel index range [a, b) whose centres may fall inside [lo, hi] (image-side units)."""
    return max(0, int(np.floor(lo * n))), min(n, int(np.ceil(hi * n)) + 1)


# ---------------------------------------------------------------------------------------------
# Textures: a boolean pattern choosing between the background colour and its shade.


def texture_pattern(
    texture: int, n: int, period: float, angle: float, phase: np.ndarray
) -> np.ndarray:
    """Boolean n x n pattern of texture `texture` (True = shade) at the given period and angle."""
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    c, s = np.cos(angle), np.sin(angle)
    u = (t[None, :] * c + t[:, None] * s) / period + phase[0]
    v = (-t[None, :] * s + t[:, None] * c) / period + phase[1]
    name = TEXTURES[texture]
    if name == "stripes":
        return np.mod(u, 1.0) < 0.5
    if name == "checker":
        return (np.floor(u) + np.floor(v)) % 2 == 1
    if name == "dots":
        du, dv = np.mod(u, 1.0) - 0.5, np.mod(v, 1.0) - 0.5
        return du * du + dv * dv < 0.3**2
    if name == "waves":
        return np.mod(u + 0.35 * np.sin(2 * np.pi * v / 2.5), 1.0) < 0.5
    if name == "grid":
        return (np.mod(u, 1.0) < 0.25) | (np.mod(v, 1.0) < 0.25)
    if name == "zigzag":
        tri = np.abs(np.mod(v / 1.5, 1.0) - 0.5) * 2  # triangle wave in [0, 1]
        return np.mod(u + 0.9 * tri, 1.0) < 0.5
    raise ValueError(f"unknown texture index {texture}")


# ---------------------------------------------------------------------------------------------
# Scenes.


def _place(
    rng: np.random.Generator, shape: int, color: int, scale: tuple[float, float], main: bool
) -> PlacedObject:
    """Draw a random position, size and rotation for an object."""
    radius = float(rng.uniform(*scale)) / 2
    cx, cy = rng.uniform(0.15, 0.85, size=2)
    return PlacedObject(
        shape, color, float(cx), float(cy), radius, float(rng.uniform(0, 2 * np.pi)), main
    )


def _sample_objects(
    rng: np.random.Generator, recipe: Recipe, background: int, spec: WorldSpec
) -> list[PlacedObject]:
    """Main objects from the recipe plus random smaller distractors, shuffled into drawing order."""
    objects = []
    for _ in range(int(rng.integers(recipe.count[0], recipe.count[1] + 1))):
        shape = SHAPES.index(recipe.shapes[rng.integers(len(recipe.shapes))])
        color = COLOR_NAMES.index(recipe.colors[rng.integers(len(recipe.colors))])
        objects.append(_place(rng, shape, color, MAIN_SCALE, True))
    others = [i for i in range(len(COLOR_NAMES)) if i != background]
    for _ in range(int(rng.integers(0, spec.max_distractors + 1))):
        shape, color = int(rng.integers(len(SHAPES))), others[rng.integers(len(others))]
        objects.append(_place(rng, shape, color, DISTRACTOR_SCALE, False))
    return [objects[i] for i in rng.permutation(len(objects))]


def _stack_layers(masks: list[tuple[np.ndarray, int]], shape: tuple[int, int]) -> list[np.ndarray]:
    """Stack (mask, label) pairs listed top first into layers: layer k holds the k-th cover."""
    layers: list[np.ndarray] = []
    depth = np.zeros(shape, dtype=np.int32)
    for mask, label in masks:
        for k in np.unique(depth[mask]):
            if k == len(layers):
                layers.append(np.zeros(shape, dtype=np.int32))
            layers[k][mask & (depth == k)] = label
        depth += mask
    return layers


def render_scene(rng: np.random.Generator, class_index: int, spec: WorldSpec) -> Scene:
    """Render one scene of class `class_index`: image plus its labels at half resolution."""
    spec.validate()
    if not 0 <= class_index < spec.n_classes:
        raise ValueError(f"class_index must be in 0..{spec.n_classes - 1}, got {class_index}")
    recipe = RECIPES[class_index]
    n, sn = spec.image_size, spec.seg_size
    texture = TEXTURES.index(recipe.textures[rng.integers(len(recipe.textures))])
    background = COLOR_NAMES.index(recipe.backgrounds[rng.integers(len(recipe.backgrounds))])
    period = float(rng.uniform(*TEXTURE_PERIOD))
    angle, phase = float(rng.uniform(0, np.pi)), rng.uniform(0, 1, size=2)
    objects = _sample_objects(rng, recipe, background, spec)

    pattern = texture_pattern(texture, n, period, angle, phase)
    canvas = np.where(pattern[..., None], SHADES[background], PALETTE[background]).astype(
        np.float32
    )
    color = np.full((sn, sn), background + 1, dtype=np.int32)
    covers: list[tuple[np.ndarray, np.ndarray, PlacedObject]] = []
    for obj in objects:  # bottom first
        rows, cols, d = _object_window(obj, n)
        alpha = np.clip(0.5 - d * n, 0.0, 1.0)[..., None]
        window = canvas[rows, cols]
        canvas[rows, cols] = window + alpha * (PALETTE[obj.color] - window)
        rows, cols, d = _object_window(obj, sn)
        inside = np.zeros((sn, sn), dtype=bool)
        inside[rows, cols] = d <= 0
        rim = np.zeros((sn, sn), dtype=bool)
        rim[rows, cols] = (d <= 0) & (d > -RIM_WIDTH / sn)
        color[inside] = obj.color + 1
        covers.append((inside, rim, obj))
    covers.reverse()  # top first
    object_layers = _stack_layers([(inside, obj.shape + 1) for inside, _, obj in covers], (sn, sn))
    part_layers = _stack_layers([(rim, obj.shape + 1) for _, rim, obj in covers], (sn, sn))

    if spec.noise > 0:
        canvas += rng.normal(0.0, spec.noise * 255.0, size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(
        image=image,
        class_index=class_index,
        color=color,
        object_layers=object_layers,
        part_layers=part_layers,
        texture=texture,
        scene=class_index,
        background=background,
        objects=tuple(objects),
    )
