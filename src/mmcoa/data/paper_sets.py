"""The paper's out-of-distribution benchmarks that torchvision reads (MMCoA paper, Sec. IV-A).

``stl10``, ``food101``, ``oxford_pets``, ``flowers102``, ``dtd``, ``eurosat``, ``fgvc_aircraft``,
``sun397``, ``country211``, ``caltech101`` and ``caltech256``, each in torchvision's own folder
layout under ``--data-root`` (``--download`` fetches them through torchvision). Splits are
torchvision's; EuroSAT, SUN397 and Caltech101/256 ship none, so they get a fixed 80/20 per-class
split (seed 0, :func:`~mmcoa.data.paper_common.seeded_split`) over their sorted file list. Prompts
are the per-dataset templates of the published MMCoA code.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch.utils.data import Dataset, Subset
from torchvision import datasets

from mmcoa.data.paper_common import NATIVE, RESIZED, SQUARE_224, PaperSet, seeded_split, split_camel_case
from mmcoa.errors import MmcoaError

DOWNLOAD = "pass --download on a machine with internet"


class UnhashedSTL10(datasets.STL10):
    """STL10 that checks that its labelled files exist, not their MD5s.

    torchvision hashes every ``.bin`` file on each load (about 3 GB, mostly ``unlabeled_X.bin``,
    which it requires although evaluation never reads it), and refuses files whose hash it does not know,
    which rules out the small stand-in files of the tests. ``download()`` still checks the
    archive's MD5 (``tgz_md5``).
    """

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list[:2] + self.test_list)


class UnhashedFlowers102(datasets.Flowers102):
    """Flowers102 that checks that ``imagelabels.mat`` and ``setid.mat`` exist, not their MD5s.

    Same reason as :class:`UnhashedSTL10`; ``download()`` still checks every file it fetches.
    """

    def _check_integrity(self) -> bool:
        mats = [name for name, _ in self._file_dict.values() if name.endswith(".mat")]
        return self._images_folder.is_dir() and all((self._base_folder / n).is_file() for n in mats)


class SortedSUN397(datasets.SUN397):
    """SUN397 with its images in sorted path order.

    torchvision lists them with ``Path.rglob``, whose order depends on the file system, so the
    seeded split would pick different images on different machines.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pairs = sorted(zip(self._image_files, self._labels))
        self._image_files = [path for path, _ in pairs]
        self._labels = [label for _, label in pairs]


def seeded_subset(full: Dataset, labels: list[int], split: str) -> Subset:
    """The ``split`` part of the fixed per-class 80/20 split of ``full``."""
    return Subset(full, seeded_split(labels)[split])


def caltech256_name(folder: str) -> str:
    """``"253.faces-easy-101"`` → ``"faces-easy"``: drop the number prefix and ``-101`` suffix."""
    return re.sub(r"-101$", "", re.sub(r"^\d+\.", "", folder))


def _stl10(split: str, root: Path, size: str = "native"):
    inner = UnhashedSTL10(str(root), split=split, transform=SQUARE_224 if size == "224" else NATIVE)
    return inner, inner.classes


def _food101(split: str, root: Path):
    inner = datasets.Food101(str(root), split=split, transform=RESIZED)
    return inner, inner.classes


def _oxford_pets(split: str, root: Path):
    inner = datasets.OxfordIIITPet(str(root), split=split, transform=RESIZED)
    return inner, inner.classes


def _flowers102(split: str, root: Path):
    try:
        import scipy.io  # noqa: F401  (torchvision reads the .mat label files with it)
    except ImportError:
        raise MmcoaError(
            "dataset flowers102 needs scipy to read its .mat label files; pip install scipy"
        ) from None
    inner = UnhashedFlowers102(str(root), split=split, transform=RESIZED)
    bad = [label for label in inner._labels if not 0 <= label < len(inner.classes)]
    if bad:
        raise MmcoaError(
            f"dataset flowers102: imagelabels.mat holds label {bad[0] + 1}, outside 1..{len(inner.classes)}"
        )
    return inner, inner.classes


def _dtd(split: str, root: Path):
    inner = datasets.DTD(str(root), split=split, partition=1, transform=RESIZED)
    return inner, inner.classes


def _eurosat(split: str, root: Path):
    full = datasets.EuroSAT(str(root), transform=RESIZED)
    return seeded_subset(full, full.targets, split), [split_camel_case(c) for c in full.classes]


def _fgvc_aircraft(split: str, root: Path):
    inner = datasets.FGVCAircraft(str(root), split=split, annotation_level="variant", transform=RESIZED)
    return inner, inner.classes


def _sun397(split: str, root: Path):
    full = SortedSUN397(str(root), transform=RESIZED)
    return seeded_subset(full, full._labels, split), full.classes


def _country211(split: str, root: Path):
    inner = datasets.Country211(str(root), split=COUNTRY211_FOLDERS[split], transform=RESIZED)
    return inner, [COUNTRY_NAMES.get(code, code) for code in inner.classes]


def _caltech101(split: str, root: Path):
    full = datasets.Caltech101(str(root), target_type="category", transform=RESIZED)
    return seeded_subset(full, full.y, split), full.categories


def _caltech256(split: str, root: Path):
    full = datasets.Caltech256(str(root), transform=RESIZED)
    return seeded_subset(full, full.y, split), [caltech256_name(c) for c in full.categories]


SEEDED = "fixed split: 20% of each class to test, seed 0"
COUNTRY211_FOLDERS = {"train": "train", "val": "valid", "test": "test"}

SETS = [
    PaperSet(
        name="stl10",
        folder="stl10_binary",
        splits=("train", "test"),
        n_classes=10,
        description="STL-10, 96x96 native; train 5000 / test 8000",
        layout="stl10_binary/{train_X,train_y,test_X,test_y}.bin and stl10_binary/class_names.txt",
        obtain=f"{DOWNLOAD} (or unpack {datasets.STL10.url} there)",
        needs=("class_names.txt",),
        split_needs={"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")},
        build=_stl10,
        fetch=lambda root: UnhashedSTL10(str(root), split="test", download=True),
        image_size=(96, 96),
        choices={"size": ("native", "224")},
        image_size_of=lambda options: (224, 224) if options["size"] == "224" else (96, 96),
    ),
    PaperSet(
        name="food101",
        folder="food-101",
        splits=("train", "test"),
        n_classes=101,
        description="Food-101 dishes; train 75750 / test 25250; 224 crop",
        layout="food-101/images/<class>/<id>.jpg and food-101/meta/{train,test}.json",
        obtain=f"{DOWNLOAD} (or unpack {datasets.Food101._URL} there)",
        needs=("images/",),
        split_needs={s: (f"meta/{s}.json",) for s in ("train", "test")},
        build=_food101,
        fetch=lambda root: datasets.Food101(str(root), download=True),
        template="A photo of {}, a type of food.",
    ),
    PaperSet(
        name="oxford_pets",
        folder="oxford-iiit-pet",
        splits=("trainval", "test"),
        n_classes=37,
        description="Oxford-IIIT Pet breeds; trainval 3680 / test 3669; 224 crop",
        layout="oxford-iiit-pet/images/<Breed>_<n>.jpg and oxford-iiit-pet/annotations/{trainval,test}.txt",
        obtain=f"{DOWNLOAD} (or unpack images.tar.gz and annotations.tar.gz from "
        "https://www.robots.ox.ac.uk/~vgg/data/pets/ into oxford-iiit-pet/)",
        needs=("images/",),
        split_needs={s: (f"annotations/{s}.txt",) for s in ("trainval", "test")},
        build=_oxford_pets,
        fetch=lambda root: datasets.OxfordIIITPet(str(root), download=True),
        template="A photo of a {}, a type of pet.",
    ),
    PaperSet(
        name="flowers102",
        folder="flowers-102",
        splits=("train", "val", "test"),
        n_classes=102,
        description="Oxford 102 Flowers; train 1020 / val 1020 / test 6149; 224 crop; needs scipy",
        layout="flowers-102/jpg/image_<5 digits>.jpg and flowers-102/{imagelabels,setid}.mat",
        obtain=f"{DOWNLOAD} (or put 102flowers.tgz unpacked and the two .mat files from "
        f"{datasets.Flowers102._download_url_prefix} into flowers-102/)",
        needs=("jpg/", "imagelabels.mat", "setid.mat"),
        build=_flowers102,
        fetch=lambda root: UnhashedFlowers102(str(root), download=True),
        template="A photo of a {}, a type of flower.",
    ),
    PaperSet(
        name="dtd",
        folder="dtd",
        splits=("train", "val", "test"),
        n_classes=47,
        description="Describable Textures, partition 1; train / val / test 1880 each; 224 crop",
        layout="dtd/dtd/images/<texture>/<name>.jpg and dtd/dtd/labels/{train,val,test}1.txt",
        obtain=f"{DOWNLOAD} (or unpack {datasets.DTD._URL} into dtd/)",
        needs=("dtd/images/",),
        split_needs={s: (f"dtd/labels/{s}1.txt",) for s in ("train", "val", "test")},
        build=_dtd,
        fetch=lambda root: datasets.DTD(str(root), download=True),
        template="A surface with a {} texture.",
    ),
    PaperSet(
        name="eurosat",
        folder="eurosat",
        splits=("train", "test"),
        n_classes=10,
        description=f"EuroSAT RGB land use, 27000 images of 64 px; {SEEDED}; 224 crop",
        layout="eurosat/2750/<Class>/<Class>_<n>.jpg",
        obtain=f"{DOWNLOAD} (or unzip EuroSAT.zip from https://github.com/phelber/eurosat into eurosat/)",
        needs=("2750/",),
        build=_eurosat,
        fetch=lambda root: datasets.EuroSAT(str(root), download=True),
        template="A centered satellite photo of {}.",
    ),
    PaperSet(
        name="fgvc_aircraft",
        folder="fgvc-aircraft-2013b",
        splits=("train", "val", "trainval", "test"),
        n_classes=100,
        description="FGVC-Aircraft 2013b variants; trainval 6667 / test 3333; 224 crop",
        layout="fgvc-aircraft-2013b/data/images/<id>.jpg, data/variants.txt and "
        "data/images_variant_{train,val,trainval,test}.txt",
        obtain=f"{DOWNLOAD} (or unpack {datasets.FGVCAircraft._URL} there)",
        needs=("data/images/", "data/variants.txt"),
        split_needs={s: (f"data/images_variant_{s}.txt",) for s in ("train", "val", "trainval", "test")},
        build=_fgvc_aircraft,
        fetch=lambda root: datasets.FGVCAircraft(str(root), download=True),
        template="A photo of a {}, a type of aircraft.",
    ),
    PaperSet(
        name="sun397",
        folder="SUN397",
        splits=("train", "test"),
        n_classes=397,
        description=f"SUN397 scenes, 108754 images; {SEEDED}; 224 crop",
        layout="SUN397/ClassName.txt and SUN397/<letter>/<scene>[/<sub-scene>]/sun_<id>.jpg",
        obtain=f"{DOWNLOAD} (or unpack {datasets.SUN397._DATASET_URL} there)",
        needs=("ClassName.txt",),
        build=_sun397,
        fetch=lambda root: SortedSUN397(str(root), download=True),
    ),
    PaperSet(
        name="country211",
        folder="country211",
        splits=("train", "val", "test"),
        n_classes=211,
        description="Country211 (OpenAI) geolocation; train 31650 / val 10550 / test 21100; 224 crop",
        layout="country211/{train,valid,test}/<ISO 3166 code>/<id>.jpg",
        obtain=f"{DOWNLOAD} (or unpack {datasets.Country211._URL} there)",
        split_needs={s: (f"{folder}/",) for s, folder in COUNTRY211_FOLDERS.items()},
        build=_country211,
        fetch=lambda root: datasets.Country211(str(root), download=True),
        template="A photo I took in {}.",
    ),
    PaperSet(
        name="caltech101",
        folder="caltech101",
        splits=("train", "test"),
        n_classes=101,
        description=f"Caltech-101 objects (BACKGROUND_Google left out); {SEEDED}; 224 crop",
        layout="caltech101/101_ObjectCategories/<class>/image_<4 digits>.jpg",
        obtain=f"{DOWNLOAD} (or unpack 101_ObjectCategories from https://data.caltech.edu/records/20086 "
        "into caltech101/)",
        needs=("101_ObjectCategories/",),
        build=_caltech101,
        fetch=lambda root: datasets.Caltech101(str(root), download=True),
        template="A photo of a {}.",
    ),
    PaperSet(
        name="caltech256",
        folder="caltech256",
        splits=("train", "test"),
        n_classes=257,
        description=f"Caltech-256 objects plus clutter; {SEEDED}; 224 crop",
        layout="caltech256/256_ObjectCategories/<NNN>.<class>/<NNN>_<4 digits>.jpg",
        obtain=f"{DOWNLOAD} (or unpack 256_ObjectCategories.tar from https://data.caltech.edu/records/20087 "
        "into caltech256/)",
        needs=("256_ObjectCategories/",),
        build=_caltech256,
        fetch=lambda root: datasets.Caltech256(str(root), download=True),
        template="A photo of a {}.",
    ),
]

for _set in SETS:
    _set.register()

# Country211's folders are ISO 3166 alpha-2 codes; prompts need the country's name. These are the
# names of OpenAI's Country211 prompts as clip_benchmark ships them (en_classnames.json, in code
# order), kept here because that package pulls in scikit-learn, pycocoevalcap and webdataset.
COUNTRY_NAMES = {
    "AD": "Andorra",
    "AE": "United Arab Emirates",
    "AF": "Afghanistan",
    "AG": "Antigua and Barbuda",
    "AI": "Anguilla",
    "AL": "Albania",
    "AM": "Armenia",
    "AO": "Angola",
    "AQ": "Antarctica",
    "AR": "Argentina",
    "AT": "Austria",
    "AU": "Australia",
    "AW": "Aruba",
    "AX": "Aland Islands",
    "AZ": "Azerbaijan",
    "BA": "Bosnia and Herzegovina",
    "BB": "Barbados",
    "BD": "Bangladesh",
    "BE": "Belgium",
    "BF": "Burkina Faso",
    "BG": "Bulgaria",
    "BH": "Bahrain",
    "BJ": "Benin",
    "BM": "Bermuda",
    "BN": "Brunei Darussalam",
    "BO": "Bolivia",
    "BQ": "Bonaire, Saint Eustatius and Saba",
    "BR": "Brazil",
    "BS": "Bahamas",
    "BT": "Bhutan",
    "BW": "Botswana",
    "BY": "Belarus",
    "BZ": "Belize",
    "CA": "Canada",
    "CD": "DR Congo",
    "CF": "Central African Republic",
    "CH": "Switzerland",
    "CI": "Cote d'Ivoire",
    "CK": "Cook Islands",
    "CL": "Chile",
    "CM": "Cameroon",
    "CN": "China",
    "CO": "Colombia",
    "CR": "Costa Rica",
    "CU": "Cuba",
    "CV": "Cabo Verde",
    "CW": "Curacao",
    "CY": "Cyprus",
    "CZ": "Czech Republic",
    "DE": "Germany",
    "DK": "Denmark",
    "DM": "Dominica",
    "DO": "Dominican Republic",
    "DZ": "Algeria",
    "EC": "Ecuador",
    "EE": "Estonia",
    "EG": "Egypt",
    "ES": "Spain",
    "ET": "Ethiopia",
    "FI": "Finland",
    "FJ": "Fiji",
    "FK": "Falkland Islands",
    "FO": "Faeroe Islands",
    "FR": "France",
    "GA": "Gabon",
    "GB": "United Kingdom",
    "GD": "Grenada",
    "GE": "Georgia",
    "GF": "French Guiana",
    "GG": "Guernsey",
    "GH": "Ghana",
    "GI": "Gibraltar",
    "GL": "Greenland",
    "GM": "Gambia",
    "GP": "Guadeloupe",
    "GR": "Greece",
    "GS": "South Georgia and South Sandwich Is.",
    "GT": "Guatemala",
    "GU": "Guam",
    "GY": "Guyana",
    "HK": "Hong Kong",
    "HN": "Honduras",
    "HR": "Croatia",
    "HT": "Haiti",
    "HU": "Hungary",
    "ID": "Indonesia",
    "IE": "Ireland",
    "IL": "Israel",
    "IM": "Isle of Man",
    "IN": "India",
    "IQ": "Iraq",
    "IR": "Iran",
    "IS": "Iceland",
    "IT": "Italy",
    "JE": "Jersey",
    "JM": "Jamaica",
    "JO": "Jordan",
    "JP": "Japan",
    "KE": "Kenya",
    "KG": "Kyrgyz Republic",
    "KH": "Cambodia",
    "KN": "St. Kitts and Nevis",
    "KP": "North Korea",
    "KR": "South Korea",
    "KW": "Kuwait",
    "KY": "Cayman Islands",
    "KZ": "Kazakhstan",
    "LA": "Laos",
    "LB": "Lebanon",
    "LC": "St. Lucia",
    "LI": "Liechtenstein",
    "LK": "Sri Lanka",
    "LR": "Liberia",
    "LT": "Lithuania",
    "LU": "Luxembourg",
    "LV": "Latvia",
    "LY": "Libya",
    "MA": "Morocco",
    "MC": "Monaco",
    "MD": "Moldova",
    "ME": "Montenegro",
    "MF": "Saint-Martin",
    "MG": "Madagascar",
    "MK": "Macedonia",
    "ML": "Mali",
    "MM": "Myanmar",
    "MN": "Mongolia",
    "MO": "Macau",
    "MQ": "Martinique",
    "MR": "Mauritania",
    "MT": "Malta",
    "MU": "Mauritius",
    "MV": "Maldives",
    "MW": "Malawi",
    "MX": "Mexico",
    "MY": "Malaysia",
    "MZ": "Mozambique",
    "NA": "Namibia",
    "NC": "New Caledonia",
    "NG": "Nigeria",
    "NI": "Nicaragua",
    "NL": "Netherlands",
    "NO": "Norway",
    "NP": "Nepal",
    "NZ": "New Zealand",
    "OM": "Oman",
    "PA": "Panama",
    "PE": "Peru",
    "PF": "French Polynesia",
    "PG": "Papua New Guinea",
    "PH": "Philippines",
    "PK": "Pakistan",
    "PL": "Poland",
    "PR": "Puerto Rico",
    "PS": "Palestine",
    "PT": "Portugal",
    "PW": "Palau",
    "PY": "Paraguay",
    "QA": "Qatar",
    "RE": "Reunion",
    "RO": "Romania",
    "RS": "Serbia",
    "RU": "Russia",
    "RW": "Rwanda",
    "SA": "Saudi Arabia",
    "SB": "Solomon Islands",
    "SC": "Seychelles",
    "SD": "Sudan",
    "SE": "Sweden",
    "SG": "Singapore",
    "SH": "St. Helena",
    "SI": "Slovenia",
    "SJ": "Svalbard and Jan Mayen Islands",
    "SK": "Slovakia",
    "SL": "Sierra Leone",
    "SM": "San Marino",
    "SN": "Senegal",
    "SO": "Somalia",
    "SS": "South Sudan",
    "SV": "El Salvador",
    "SX": "Sint Maarten",
    "SY": "Syria",
    "SZ": "Eswatini",
    "TG": "Togo",
    "TH": "Thailand",
    "TJ": "Tajikistan",
    "TL": "Timor-Leste",
    "TM": "Turkmenistan",
    "TN": "Tunisia",
    "TO": "Tonga",
    "TR": "Turkey",
    "TT": "Trinidad and Tobago",
    "TW": "Taiwan",
    "TZ": "Tanzania",
    "UA": "Ukraine",
    "UG": "Uganda",
    "US": "United States",
    "UY": "Uruguay",
    "UZ": "Uzbekistan",
    "VA": "Vatican",
    "VE": "Venezuela",
    "VG": "British Virgin Islands",
    "VI": "United States Virgin Islands",
    "VN": "Vietnam",
    "VU": "Vanuatu",
    "WS": "Samoa",
    "XK": "Kosovo",
    "YE": "Yemen",
    "ZA": "South Africa",
    "ZM": "Zambia",
    "ZW": "Zimbabwe",
}
