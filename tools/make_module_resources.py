"""Generate the modules' Qt Designer .ui files and 128x128 icons (run once; outputs are committed).

    python tools/make_module_resources.py

The .ui files can be edited in Qt Designer afterwards; rerunning this overwrites them.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

RESOURCES = Path(__file__).resolve().parents[1] / "SegmentationSuite" / "Resources"

# module -> [(parameter, widget kind, label, tooltip, default)]
ENGINE_OPTIONS = {
    "SynthSeg": [
        ("parc", "check", "Cortical parcellation", "Also label the cortex with the Desikan-Killiany parcels (--parc)", False),
        ("robust", "check", "Robust (SynthSeg-robust)", "Slower model for low-quality or clinical scans (--robust)", False),
        ("fast", "check", "Fast", "Skip some postprocessing to save time and memory (--fast)", False),
        ("qc", "check", "Quality control scores", "Predict QC scores per structure group (--qc)", True),
    ],
    "ScLimbic": [
        ("etiv", "check", "Estimated total intracranial volume", "Compute eTIV and add it to the volumes (--etiv)", False),
        ("keepAc", "check", "Keep the anterior commissure", "Keep label 853 Mid-AntCom (--keep_ac)", False),
        ("voxelCountVolumes", "check", "Voxel-count volumes", "Volumes from voxel counts instead of posteriors", False),
        ("conform", "check", "Conform to 1 mm", "Resample the input to 1 mm isotropic first (--conform)", False),
    ],
    "SpinalCordEPI": [
        ("largest", "check", "Keep largest object", "Keep only the largest connected component", False),
        ("fillHoles", "check", "Fill holes", "Fill holes in the cord mask", False),
        ("testTimeAugmentation", "check", "Test-time augmentation", "Mirror the input and average (slower)", False),
    ],
    "SamsegBrainMask": [
        ("keepCsf", "check", "Keep CSF (samseg2recon preset)",
         "Keep label 24 in the mask as FreeSurfer's samseg2recon does; default removes 24, 165, 258, 259 (fMRIPrep patch)", False),
    ],
}

TITLES = {"SynthSeg": "SynthSeg", "ScLimbic": "ScLimbic", "SpinalCordEPI": "Spinal cord EPI",
          "SamsegBrainMask": "SAMSEG brain mask", "SegmentationSuiteModels": "SegmentationSuite Models",
          "SegmentationSuitePreprocess": "MNI152 preprocessing (VBM)"}

# Subclasses of vtkMRMLScalarVolumeNode that are not one grey-scale image (as Slicer's Segmentations
# and Models module .ui files hide child node types at v5.10.0).
HIDDEN_INPUT_NODE_TYPES = ["vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode",
                           "vtkMRMLDiffusionWeightedVolumeNode", "vtkMRMLDiffusionTensorVolumeNode"]


class Ui:
    def __init__(self):
        self.lines: list[str] = []
        self.counter = 0

    def add(self, text: str) -> None:
        self.lines.append(text)

    def prop(self, name: str, kind: str, value) -> None:
        if kind == "string":
            self.add(f'<property name="{name}"><string>{escape(str(value))}</string></property>')
        elif kind == "bool":
            self.add(f'<property name="{name}"><bool>{"true" if value else "false"}</bool></property>')
        elif kind == "number":
            self.add(f'<property name="{name}"><number>{int(value)}</number></property>')
        elif kind == "double":
            self.add(f'<property name="{name}"><double>{float(value)}</double></property>')
        elif kind == "stringlist":
            items = "".join(f"<string>{escape(v)}</string>" for v in value)
            self.add(f'<property name="{name}"><stringlist>{items}</stringlist></property>')
        elif kind == "set":
            self.add(f'<property name="{name}"><set>{value}</set></property>')

    def widget(self, cls: str, name: str, **props):
        self.add(f'<widget class="{cls}" name="{name}">')
        for key, (kind, value) in props.items():
            self.prop(key, kind, value)

    def end(self) -> None:
        self.add("</widget>")

    def row(self, label: str, cls: str, name: str, **props) -> None:
        self.counter += 1
        self.add(f'<item row="{self.counter}" column="0"><widget class="QLabel" name="label_{name}">'
                 f'<property name="text"><string>{escape(label)}</string></property></widget></item>')
        self.add(f'<item row="{self.counter}" column="1">')
        self.widget(cls, name, **props)
        self.end()
        self.add("</item>")

    def full_row(self, cls: str, name: str, **props) -> None:
        self.counter += 1
        self.add(f'<item row="{self.counter}" column="0" colspan="2">')
        self.widget(cls, name, **props)
        self.end()
        self.add("</item>")

    def section(self, name: str, title: str, collapsed: bool = False):
        self.add("<item>")
        self.widget("ctkCollapsibleButton", name, text=("string", title), collapsed=("bool", collapsed))
        self.add('<layout class="QGridLayout">')

    def end_section(self) -> None:
        self.add("</layout>")
        self.end()
        self.add("</item>")

    def document(self, module: str, selectors=("inputVolumeSelector", "outputSegmentationSelector")) -> str:
        custom = [("ctkCollapsibleButton", "QWidget", 1), ("ctkPathLineEdit", "QWidget", 0),
                  ("qMRMLNodeComboBox", "QWidget", 0), ("qMRMLWidget", "QWidget", 1)]
        parts = ['<?xml version="1.0" encoding="UTF-8"?>', '<ui version="4.0">', f"<class>{module}</class>",
                 f'<widget class="qMRMLWidget" name="{module}">', '<layout class="QVBoxLayout" name="verticalLayout">']
        parts += self.lines
        parts += ['<item><spacer name="verticalSpacer"><property name="orientation"><enum>Qt::Vertical</enum>'
                  "</property></spacer></item>", "</layout>", "</widget>", "<customwidgets>"]
        for cls, base, container in custom:
            parts.append(f"<customwidget><class>{cls}</class><extends>{base}</extends><header>{cls}.h</header>"
                         + ("<container>1</container>" if container else "") + "</customwidget>")
        parts += ["</customwidgets>", "<connections>"]
        if module != "SegmentationSuiteModels":  # the node selector follows the module's scene
            for selector in selectors:
                parts.append(f"<connection><sender>{module}</sender><signal>mrmlSceneChanged(vtkMRMLScene*)</signal>"
                             f"<receiver>{selector}</receiver><slot>setMRMLScene(vtkMRMLScene*)</slot></connection>")
        parts += ["</connections>", "</ui>"]
        return "\n".join(parts) + "\n"


def hidden_input_node_types(module: str) -> list[str]:
    """The SAMSEG brain mask reads a segmentation, which Slicer may have loaded as a label map."""
    if module == "SamsegBrainMask":
        return [name for name in HIDDEN_INPUT_NODE_TYPES if name != "vtkMRMLLabelMapVolumeNode"]
    return HIDDEN_INPUT_NODE_TYPES


def engine_ui(module: str) -> str:
    ui = Ui()
    ui.section("inputsCollapsibleButton", "Inputs")
    ui.row("Input volume:", "qMRMLNodeComboBox", "inputVolumeSelector",
           nodeTypes=("stringlist", ["vtkMRMLScalarVolumeNode"]),
           hideChildNodeTypes=("stringlist", hidden_input_node_types(module)), addEnabled=("bool", False),
           removeEnabled=("bool", False), noneEnabled=("bool", True),
           toolTip=("string", "The image to segment (any orientation; it is not modified)"))
    ui.full_row("QCheckBox", "batchCheckBox", text=("string", "Batch: segment every image in a folder"))
    ui.row("Input folder:", "ctkPathLineEdit", "inputFolderPathLineEdit", filters=("set", "ctkPathLineEdit::Dirs"),
           toolTip=("string", "Every .nii, .nii.gz, .mgz and .mgh file in this folder is segmented"))
    ui.row("Output folder:", "ctkPathLineEdit", "outputFolderPathLineEdit", filters=("set", "ctkPathLineEdit::Dirs"),
           toolTip=("string", "Where results are kept (one folder per subject); a batch without one goes to the "
                               "default folder shown below; existing results are replaced only if you agree"))
    ui.full_row("QLabel", "outputFolderHintLabel", text=("string", ""), wordWrap=("bool", True))
    # as TotalSegmentator / MONAIAuto3DSeg: a new segmentation, or one to replace (node, display and IDs kept)
    ui.row("Output segmentation:", "qMRMLNodeComboBox", "outputSegmentationSelector",
           nodeTypes=("stringlist", ["vtkMRMLSegmentationNode"]), addEnabled=("bool", False),
           removeEnabled=("bool", False), renameEnabled=("bool", True), noneEnabled=("bool", True),
           noneDisplay=("string", "Create new segmentation"),
           toolTip=("string", "A new segmentation node, or an existing one whose segments are replaced "
                               "(the node, its display settings and the IDs of segments found again are kept)"))
    ui.full_row("QCheckBox", "show3DCheckBox", text=("string", "Show 3D"),
                toolTip=("string", "Show the result as surfaces in the 3D view (remembered)"))
    ui.end_section()
    ui.counter = 0
    ui.section("optionsCollapsibleButton", "Options")
    for parameter, kind, label, tooltip, default in ENGINE_OPTIONS[module]:
        ui.full_row("QCheckBox", f"{parameter}CheckBox", text=("string", label), toolTip=("string", tooltip),
                    checked=("bool", default))
    ui.end_section()
    ui.counter = 0
    ui.section("advancedCollapsibleButton", "Advanced", collapsed=True)
    ui.row("Device:", "QComboBox", "deviceComboBox",
           toolTip=("string", "auto uses a CUDA GPU when PyTorch sees one, else the CPU"))
    ui.row("CUDA device:", "QSpinBox", "gpuSpinBox", minimum=("number", 0), maximum=("number", 63),
           enabled=("bool", False), toolTip=("string", "Which GPU when the device is cuda (0 is the first; cuda:N)"))
    ui.row("CPU threads:", "QSpinBox", "threadsSpinBox", minimum=("number", 0), maximum=("number", 256),
           specialValueText=("string", "automatic"), toolTip=("string", "0: let PyTorch choose"))
    ui.full_row("QCheckBox", "posteriorsCheckBox", text=("string", "Load posterior probabilities as volumes"))
    ui.row("Model file or folder:", "ctkPathLineEdit", "modelPathLineEdit",
           toolTip=("string", "Leave empty to use the model manager (downloads on first use)"))
    ui.full_row("QPushButton", "modelFolderButton", text=("string", "Choose a model folder..."),
                toolTip=("string", "For models that are a folder (the spinal cord nnU-Net model)"))
    ui.end_section()
    ui.counter = 0
    ui.section("modelCollapsibleButton", "Model", collapsed=True)
    ui.full_row("QTextBrowser", "modelInfoBrowser", openExternalLinks=("bool", True),
                toolTip=("string", "From the model registry: what the run will use, its licence and what to cite"))
    ui.end_section()
    run_controls(ui, "segmentation", "engine")
    return ui.document(module)


def run_controls(ui: Ui, what: str, reporter: str) -> None:
    """Apply (Cancel while running), progress, status and the log, as every run module has them."""
    ui.add("<item>")
    ui.widget("QPushButton", "applyButton", text=("string", "Apply"), enabled=("bool", False),
              toolTip=("string", f"Run the {what}; while it runs, this button cancels it"))
    ui.end()
    ui.add("</item><item>")
    ui.widget("QProgressBar", "progressBar", value=("number", 0), visible=("bool", False))
    ui.end()
    ui.add("</item><item>")
    ui.widget("QLabel", "statusLabel", text=("string", ""), wordWrap=("bool", True))
    ui.end()
    ui.add("</item>")
    ui.counter = 0
    ui.section("logCollapsibleButton", "Log", collapsed=True)
    ui.full_row("QPlainTextEdit", "logTextEdit", readOnly=("bool", True), maximumBlockCount=("number", 5000),
                toolTip=("string", f"What the {reporter} reported during the last run"))
    ui.end_section()


def preprocess_ui() -> str:
    """segsuite preprocess's inputs and options (segsuite_slicer/preprocess_gui.py wires them)."""
    module = "SegmentationSuitePreprocess"
    ui = Ui()
    ui.section("inputsCollapsibleButton", "Inputs")
    ui.row("T1w volume:", "qMRMLNodeComboBox", "inputVolumeSelector",
           nodeTypes=("stringlist", ["vtkMRMLScalarVolumeNode"]),
           hideChildNodeTypes=("stringlist", HIDDEN_INPUT_NODE_TYPES), addEnabled=("bool", False),
           removeEnabled=("bool", False), noneEnabled=("bool", True),
           toolTip=("string", "The T1-weighted image to preprocess (it is not modified)"))
    ui.row("Segmentation:", "qMRMLNodeComboBox", "segmentationSelector",
           nodeTypes=("stringlist", ["vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"]),
           addEnabled=("bool", False), removeEnabled=("bool", False), noneEnabled=("bool", True),
           noneDisplay=("string", "None: run SynthSeg first"),
           toolTip=("string", "Its segmentation (--seg): a SegmentationSuite segmentation (SynthSeg, SAMSEG brain "
                               "mask) or a label map with FreeSurfer values (aseg, SAMSEG seg.mgz)"))
    ui.row("Output folder:", "ctkPathLineEdit", "outputFolderPathLineEdit", filters=("set", "ctkPathLineEdit::Dirs"),
           toolTip=("string", "Where the outputs are kept (sMRIPrep names); existing ones are replaced only if you agree"))
    ui.full_row("QLabel", "outputFolderHintLabel", text=("string", ""), wordWrap=("bool", True))
    ui.end_section()
    ui.counter = 0
    ui.section("optionsCollapsibleButton", "Options")
    ui.row("Template:", "QComboBox", "templateComboBox",
           toolTip=("string", "auto: MNI152NLin2009cAsym when TemplateFlow has it locally, else MNI152NLin2009aSym "
                               "(--template)"))
    ui.row("Template grid (mm):", "QComboBox", "resolutionComboBox",
           toolTip=("string", "Voxel size of the template-space outputs (--resolution; 2 is faster)"))
    ui.row("Smoothing FWHM:", "QDoubleSpinBox", "fwhmSpinBox", minimum=("double", 0), maximum=("double", 50),
           singleStep=("double", 0.5), decimals=("number", 2), suffix=("string", " mm"), toolTip=("string", "Gaussian FWHM of the smoothed modulated maps (--fwhm; 0: none)"))
    ui.row("Registration:", "QComboBox", "registrationComboBox",
           toolTip=("string", "t1w+tissues: the T1w with the GM/WM maps (higher template overlap); t1w: the T1w "
                               "alone, faster (--registration)"))
    ui.row("CPU threads:", "QSpinBox", "threadsSpinBox", minimum=("number", 0), maximum=("number", 256),
           specialValueText=("string", "default (2)"), toolTip=("string", "--threads; 0: the command's default"))
    ui.full_row("QCheckBox", "loadModulatedGMCheckBox", text=("string", "Load the modulated GM map"),
                toolTip=("string", "The Jacobian-modulated GM map in template space, over the T1w"), checked=("bool", True))
    ui.full_row("QCheckBox", "inputUnderTransformCheckBox", text=("string", "Show the input in template space"),
                toolTip=("string", "Place the input volume under the new transform (harden it or remove it from the "
                                    "transform before another module reads it)"), checked=("bool", False))
    ui.end_section()
    run_controls(ui, "preprocessing", "preprocessing")
    return ui.document(module, selectors=("inputVolumeSelector", "segmentationSelector"))


def models_ui() -> str:
    ui = Ui()
    ui.add("<item>")
    ui.widget("QTableWidget", "modelsTable", toolTip=("string", "Every model SegmentationSuite knows, with its status"))
    ui.end()
    ui.add("</item>")
    ui.section("actionsCollapsibleButton", "Actions")
    buttons = [("refreshButton", "Refresh", "Read the model list and status again"),
               ("downloadButton", "Download", "Download the selected model (checksums verified)"),
               ("installFileButton", "Install from file...", "Install the selected model from a file you have"),
               ("importFreeSurferButton", "Import from FreeSurfer...", "Copy models from a FreeSurfer installation"),
               ("verifyButton", "Verify", "Check the installed files against their checksums"),
               ("removeButton", "Remove", "Delete the selected model from the cache"),
               ("openCacheButton", "Open cache folder", "Show the folder that holds the models")]
    for name, text, tip in buttons:
        ui.full_row("QPushButton", name, text=("string", text), toolTip=("string", tip))
    ui.full_row("QPushButton", "cancelButton", text=("string", "Cancel"), enabled=("bool", False))
    ui.full_row("QProgressBar", "progressBar", value=("number", 0), visible=("bool", False))
    ui.full_row("QLabel", "statusLabel", text=("string", ""), wordWrap=("bool", True))
    ui.end_section()
    ui.counter = 0
    ui.section("detailsCollapsibleButton", "Licence and citation")
    ui.full_row("QTextBrowser", "detailsBrowser", openExternalLinks=("bool", True))
    ui.end_section()
    return ui.document("SegmentationSuiteModels")


# ------------------------------------------------------------------------------------ icons

def icon(kind: str) -> np.ndarray:
    size = 128
    y, x = np.mgrid[0:size, 0:size].astype(float)
    image = np.zeros((size, size, 4), dtype=np.uint8)

    def disc(cx, cy, rx, ry, color, mask=None):
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        if mask is not None:
            inside &= mask
        image[inside] = color

    if kind in ("SynthSeg", "ScLimbic", "SamsegBrainMask"):
        disc(64, 62, 54, 46, (230, 230, 230, 255))               # brain outline
        disc(64, 62, 48, 40, (205, 62, 78, 255))                 # cortex
        disc(64, 62, 38, 31, (245, 245, 245, 255))               # white matter
        disc(46, 66, 9, 13, (0, 118, 14, 255))                   # thalami
        disc(82, 66, 9, 13, (0, 118, 14, 255))
        disc(64, 50, 5, 10, (120, 18, 134, 255))                 # ventricles
        if kind == "ScLimbic":
            for cx in (40, 88):
                disc(cx, 88, 10, 6, (220, 216, 20, 255))         # limbic structures highlighted
            disc(64, 76, 6, 5, (0, 255, 255, 255))
        if kind == "SamsegBrainMask":
            ring = ((x - 64) / 60) ** 2 + ((y - 62) / 52) ** 2
            image[(ring <= 1) & (ring >= 0.82)] = (120, 120, 120, 255)   # skull removed around the mask
            image[((x - 64) / 54) ** 2 + ((y - 62) / 46) ** 2 <= 1, 3] = 255
    elif kind == "SegmentationSuitePreprocess":
        image[14:114, 14:114] = (60, 60, 60, 255)                # template frame
        disc(64, 64, 44, 50, (200, 200, 200, 255))               # template brain
        disc(64, 64, 36, 42, (205, 62, 78, 180))                 # GM map
        for row in range(24, 104, 16):                           # deformation grid
            image[row:row + 2, 20:108] = (90, 120, 200, 255)
            image[20:108, row:row + 2] = (90, 120, 200, 255)
    elif kind == "SpinalCordEPI":
        disc(64, 64, 40, 56, (200, 200, 200, 255))               # vertebral canal, axial-ish
        disc(64, 64, 26, 40, (133, 203, 229, 255))               # cord
        disc(64, 64, 14, 22, (90, 120, 200, 255))                # grey matter
    else:  # model manager: a box with a download arrow
        image[20:108, 20:108] = (90, 120, 200, 255)
        image[28:100, 28:100] = (235, 240, 250, 255)
        image[36:76, 58:70] = (90, 120, 200, 255)
        for row in range(76, 96):
            half = 96 - row
            image[row, 64 - half:64 + half] = (90, 120, 200, 255)
    return image


def write_png(path: Path, rgba: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(path)


def main() -> None:
    (RESOURCES / "UI").mkdir(parents=True, exist_ok=True)
    (RESOURCES / "Icons").mkdir(parents=True, exist_ok=True)
    for module in ENGINE_OPTIONS:
        (RESOURCES / "UI" / f"{module}.ui").write_text(engine_ui(module), encoding="utf-8")
        write_png(RESOURCES / "Icons" / f"{module}.png", icon(module))
    (RESOURCES / "UI" / "SegmentationSuiteModels.ui").write_text(models_ui(), encoding="utf-8")
    (RESOURCES / "UI" / "SegmentationSuitePreprocess.ui").write_text(preprocess_ui(), encoding="utf-8")
    write_png(RESOURCES / "Icons" / "SegmentationSuitePreprocess.png", icon("SegmentationSuitePreprocess"))
    write_png(RESOURCES / "Icons" / "SegmentationSuiteModels.png", icon("SegmentationSuiteModels"))
    extension_icons = Path(__file__).resolve().parents[1] / "Resources" / "Icons"
    extension_icons.mkdir(parents=True, exist_ok=True)
    write_png(extension_icons / "SegmentationSuite.png", icon("SynthSeg"))


if __name__ == "__main__":
    main()
