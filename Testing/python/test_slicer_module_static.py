"""Static checks of the Slicer module (no Slicer application needed): the module and its scripts
compile, the widget names the code uses exist in the ``.ui`` file (and the ``.ui`` widgets the code
needs are used), the parameter-node names in the ``.ui`` are parameters, and the extension's CMake
file lists every Python file of the module and of the core ``Logic/`` package."""

from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "DoseDiffusion"
MODULE_FILE = MODULE_DIR / "DoseDiffusion.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "DoseDiffusion.ui"
CMAKE_FILE = MODULE_DIR / "CMakeLists.txt"

#: Widgets the module needs (outside the ones wired through SlicerParameterName).
REQUIRED_WIDGETS = {
    "ctSelector", "segmentationSelector", "planSelector", "referenceDoseSelector", "structureTable",
    "refreshStructuresButton", "prescriptionSpinBox", "fractionsSpinBox", "modelPathLineEdit", "scorecardComboBox",
    "scorecardPathLineEdit", "deviceComboBox", "remoteUrlLineEdit", "remoteTokenFileLineEdit", "stepsSpinBox",
    "candidatesSpinBox", "predictButton", "cancelButton", "progressBar", "statusLabel", "logTextEdit",
    "exportRtDoseButton", "exportToDatabaseButton", "torchStatusLabel", "prescriptionNoteLabel",
}


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).iter("widget")}


def ui_parameter_names() -> dict[str, str]:
    """widget name → its SlicerParameterName."""
    names = {}
    for name, element in ui_widgets().items():
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names[name] = prop.find("string").text
    return names


def code_widget_names() -> set[str]:
    return set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))


@pytest.mark.parametrize("path", [MODULE_FILE, *sorted((MODULE_DIR / "DoseDiffusionLib").glob("*.py")),
                                  MODULE_DIR / "Resources" / "batch_predict.py"], ids=lambda p: p.name)
def test_module_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_every_widget_the_code_uses_is_in_the_ui_file():
    missing = code_widget_names() - set(ui_widgets())
    assert not missing, f"self.ui names not in {UI_FILE.name}: {sorted(missing)}"


def test_every_needed_ui_widget_is_used_or_bound():
    used = code_widget_names() | set(ui_parameter_names())
    assert REQUIRED_WIDGETS <= set(ui_widgets())
    unused = REQUIRED_WIDGETS - used
    assert not unused, f"widgets neither used in the code nor bound to a parameter: {sorted(unused)}"
    # every input widget of the .ui (not labels, layouts, containers) is used or bound
    inputs = {n for n, w in ui_widgets().items()
              if w.get("class") not in ("QLabel", "ctkCollapsibleButton", "qMRMLWidget") or n == "statusLabel"}
    assert not inputs - used, f"unused widgets in the .ui: {sorted(inputs - used)}"


def test_ui_root_and_scene_connections():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "DoseDiffusion"
    combos = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert combos == connected


def test_ui_parameter_names_are_parameters_of_the_parameter_node():
    tree = ast.parse(MODULE_FILE.read_text())
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DoseDiffusionParameterNode")
    parameters = {s.target.id for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    bound = ui_parameter_names()
    assert set(bound.values()) <= parameters, sorted(set(bound.values()) - parameters)
    assert len(set(bound.values())) == len(bound)
    # the remote token is never a parameter (it lives in QSettings)
    assert not any("token" in p.lower() for p in parameters)


def test_module_structure_follows_the_template():
    tree = ast.parse(MODULE_FILE.read_text())
    classes = {n.name: [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in n.bases]
               for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["DoseDiffusion"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["DoseDiffusionWidget"]
    assert classes["DoseDiffusionLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["DoseDiffusionTest"] == ["ScriptedLoadableModuleTest"]


def test_logic_methods_use_no_qt():
    tree = ast.parse(MODULE_FILE.read_text())
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DoseDiffusionLogic")
    names = {n.id for n in ast.walk(logic) if isinstance(n, ast.Name)}
    assert not names & {"qt", "ctk"}


def test_helpers_import_no_qt():
    for path in (MODULE_DIR / "DoseDiffusionLib").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"qt", "ctk", "PythonQt"}, path.name
    for path in (MODULE_DIR / "Logic").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+(slicer|qt|ctk)\b", path.read_text(), re.M), path


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"no set({variable} ...) in {CMAKE_FILE}"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def test_cmake_lists_every_python_file():
    text = CMAKE_FILE.read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    scripts = {s.replace("${MODULE_NAME}", "DoseDiffusion") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = {"DoseDiffusion.py"} | {
        p.relative_to(MODULE_DIR).as_posix() for folder in ("Logic", "DoseDiffusionLib")
        for p in (MODULE_DIR / folder).rglob("*.py") if "__pycache__" not in p.parts}
    assert not on_disk - scripts, f"Python files missing from {CMAKE_FILE.name}: {sorted(on_disk - scripts)}"
    assert not scripts - on_disk, f"{CMAKE_FILE.name} lists files that do not exist: {sorted(scripts - on_disk)}"


def test_cmake_resources_exist():
    text = CMAKE_FILE.read_text()
    resources = [r.replace("${MODULE_NAME}", "DoseDiffusion") for r in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    for resource in resources:
        assert (MODULE_DIR / resource).is_file(), resource
    for folder in ("Scorecards", "DemoCase", "Models"):
        assert f"Resources/{folder}/*" in text


def test_top_level_cmake_declares_the_extension():
    text = (MODULE_DIR.parent / "CMakeLists.txt").read_text()
    assert 'set(EXTENSION_DEPENDS "SlicerRT PyTorch")' in text and "add_subdirectory(DoseDiffusion)" in text


def test_icon_is_a_128_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "DoseDiffusion.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 128 and int.from_bytes(data[20:24], "big") == 128


def test_the_sample_data_it_registers_is_there():
    """The demo case and the thumbnail that the Sample Data registration names exist, and the module
    registers it once the application has started (as the Extension Wizard template does)."""
    text = MODULE_FILE.read_text()
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in text
    assert "customDownloader=loadDemoCase" in text
    assert sorted((MODULE_DIR / "Resources" / "DemoCase").glob("*.dcm")) and (MODULE_DIR / "Resources" / "Icons" /
                                                                             "DoseDiffusion.png").is_file()


# ----------------------------------------------------------------------------- issue 29: calls pinned to the real APIs

LIB_DIR = MODULE_DIR / "DoseDiffusionLib"
ROOT = MODULE_DIR.parent


def _function(path: Path, name: str, cls: str | None = None) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    body = tree.body
    if cls is not None:
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    return next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)


def _called(function: ast.AST) -> set[str]:
    """Names of the methods and functions ``function`` calls."""
    return {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
            for c in ast.walk(function) if isinstance(c, ast.Call)}


#: SlicerRT's DVH API as its sources define it (SlicerRT master, DoseVolumeHistogram/Logic and MRML):
#: vtkSlicerDoseVolumeHistogramModuleLogic::ComputeDvh(vtkMRMLDoseVolumeHistogramNode*) -> std::string (error,
#: "" on success) and AddDvhToChart(vtkMRMLPlotChartNode*, vtkMRMLTableNode*) -> vtkMRMLPlotSeriesNode*;
#: vtkMRMLDoseVolumeHistogramNode: SetAndObserveDoseVolumeNode, SetAndObserveSegmentationNode,
#: SetSelectedSegmentIDs(std::vector<std::string>), GetMetricsTableNode, GetChartNode, AssembleDvhNodeReference.
SLICERRT_DVH_API = {"ComputeDvh", "AddDvhToChart", "SetAndObserveDoseVolumeNode", "SetAndObserveSegmentationNode",
                    "SetSelectedSegmentIDs", "GetMetricsTableNode", "GetChartNode", "AssembleDvhNodeReference"}


def slicerrt_dvh_title() -> str:
    tree = ast.parse((LIB_DIR / "slicerrt_dvh.py").read_text())
    return next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "CHART_TITLE")


def test_slicerrt_dvhs_select_the_overlapping_segments_and_never_raise():
    function = _function(LIB_DIR / "slicerrt_dvh.py", "add_slicerrt_dvhs")
    assert SLICERRT_DVH_API <= _called(function)
    assert "segments_in_dose" in _called(function)
    assert not [n for n in ast.walk(function) if isinstance(n, ast.Raise)]
    # the legend tells predicted from reference (SlicerRT names a curve by its segment only), and the
    # chart says which DVH engine drew it (the scorecard's is DoseDiffusion's)
    assert {"SetName", "SetLineStyle", "SetTitle"} <= _called(function)
    assert "SetTitle(CHART_TITLE)" in ast.unparse(function) and "SlicerRT" in slicerrt_dvh_title()
    # the selection is set before ComputeDvh runs (else SlicerRT computes every segment and aborts)
    source = ast.get_source_segment((LIB_DIR / "slicerrt_dvh.py").read_text(), function)
    assert source.index("SetSelectedSegmentIDs(inside)") < source.index("logic.ComputeDvh(parameters)")
    logic = _function(MODULE_FILE, "slicerRtDvhChart", "DoseDiffusionLogic")
    assert "add_slicerrt_dvhs" in _called(logic) and not [n for n in ast.walk(logic) if isinstance(n, ast.Raise)]
    # the module's own chart is removed when SlicerRT's replaces it
    assert {"remove_nodes", "chart_nodes"} <= _called(_function(MODULE_FILE, "addPredictionFolder", "DoseDiffusionLogic"))


def test_parameter_node_prescription_defaults_are_automatic():
    """Defaults 60 Gy / 30 fractions were always passed on, so the plan's prescription was never used."""
    wrapper = next(n for n in ast.parse(MODULE_FILE.read_text()).body
                   if isinstance(n, ast.ClassDef) and n.name == "DoseDiffusionParameterNode")
    defaults = {s.target.id: ast.literal_eval(s.value) for s in wrapper.body
                if isinstance(s, ast.AnnAssign) and s.value is not None and s.target.id in ("prescriptionGy", "fractions")}
    assert defaults == {"prescriptionGy": 0.0, "fractions": 0}
    widgets = ui_widgets()
    for name in ("prescriptionSpinBox", "fractionsSpinBox"):
        props = {p.get("name"): p for p in widgets[name].findall("property")}
        assert props["specialValueText"].find("string").text == "automatic"
        assert "minimum" not in props or props["minimum"].find("number").text == "0"
    predict = _function(MODULE_FILE, "onPredictButton", "DoseDiffusionWidget")
    assert "prescription_arguments" in _called(predict)
    # a newly selected plan puts both boxes back to automatic, so that its prescription is used
    plan_changed = ast.unparse(_function(MODULE_FILE, "onPlanChanged", "DoseDiffusionWidget"))
    assert "self._parameterNode.prescriptionGy, self._parameterNode.fractions = (float(AUTOMATIC), AUTOMATIC)" \
        in plan_changed and "plan_prescription_note" in plan_changed
    assert "prescriptionNoteLabel" in code_widget_names()


def test_exports_take_the_dose_nodes_own_ct_and_plan():
    for name in ("onExportRtDoseButton", "onExportToDatabaseButton"):
        source = ast.unparse(_function(MODULE_FILE, name, "DoseDiffusionWidget"))
        assert "ctVolume" not in source and ".plan" not in source, name
    assert "export_rtdose" in _called(_function(MODULE_FILE, "exportRtDose", "DoseDiffusionLogic"))


def _import_dicom_calls(function: ast.AST) -> list[ast.Call]:
    return [c for c in ast.walk(function) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
            and c.func.attr == "importDicom"]


def test_dicom_imports_copy_the_files_and_check_the_result():
    """DICOMUtils.importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False) returns False on failure
    (Slicer's DICOMLib/DICOMUtils.py): the module copies (no entry points into the extension's folder) and
    reports a False."""
    for name, cls in (("loadDemoCase", None), ("exportRtDoseToDatabase", "DoseDiffusionLogic")):
        function = _function(MODULE_FILE, name, cls)
        calls = _import_dicom_calls(function)
        assert calls, name
        checked = {id(n.test.operand) for n in ast.walk(function) if isinstance(n, ast.If)
                   and isinstance(n.test, ast.UnaryOp) and isinstance(n.test.op, ast.Not)}
        for call in calls:
            assert id(call) in checked, f"{name}: importDicom's result is not checked"
            assert len(call.args) == 2 and {k.arg: ast.literal_eval(k.value) for k in call.keywords} == {"copyFiles": True}
    assert "TemporaryDICOMDatabase" in ast.unparse(_function(MODULE_FILE, "loadDemoCase"))  # no database open yet


def test_reload_and_test_reports_a_skip_as_a_skip():
    """Slicer's onReloadAndTest calls runTest directly and shows a failure popup for any exception."""
    run = _function(MODULE_FILE, "runTest", "DoseDiffusionTest")
    handlers = [h for t in ast.walk(run) if isinstance(t, ast.Try) for h in t.handlers]
    assert any(ast.unparse(h.type) == "unittest.SkipTest" for h in handlers)


def test_background_processes_read_utf8_and_install_within_constraints():
    process = LIB_DIR / "process.py"
    assert "start_reader" in _called(_function(process, "__init__", "BackgroundProcess"))
    assert {"write_installed_constraints", "install_command"} <= _called(_function(process, "start_install"))
    install = _function(MODULE_FILE, "installPackages", "DoseDiffusionLogic")
    assert {"start_install", "uses_slicer_packaging", "pip_install"} <= _called(install)
    assert "restart_needed" in _called(_function(MODULE_FILE, "_afterInstall", "DoseDiffusionWidget"))
    # psutil is optional in the process tree (Slicer 5.10 does not bundle it)
    tree = _function(LIB_DIR / "process_tree.py", "terminate_process_tree")
    assert any(isinstance(t, ast.Try) and any(ast.unparse(h.type) == "ImportError" for h in t.handlers)
               for t in ast.walk(tree))


def test_the_background_process_is_the_logics():
    """The widget starts, polls and cancels through the Logic; the process code is ``DoseDiffusionLib.process``'s
    (not the widget's, not ``dependencies.py``'s), and the Logic hands it the whole case."""
    widget = next(n for n in ast.parse(MODULE_FILE.read_text()).body
                  if isinstance(n, ast.ClassDef) and n.name == "DoseDiffusionWidget")
    process_calls = {"launchConsoleProcess", "start_reader", "terminate_process_tree", "predict_command",
                     "parse_progress_line", "start_prediction", "start_install", "write_sidecar_case", "write_compact"}
    assert not _called(widget) & process_calls
    assert {"startPrediction", "pollProcess", "closeProcess"} <= _called(widget)
    assert "cancelProcess" in _called(_function(MODULE_FILE, "onCancelButton", "DoseDiffusionWidget"))
    assert "start_prediction" in _called(_function(MODULE_FILE, "startPrediction", "DoseDiffusionLogic"))
    assert "cancel" in _called(_function(MODULE_FILE, "cancelProcess", "DoseDiffusionLogic"))
    process = LIB_DIR / "process.py"
    assert "launchConsoleProcess" in _called(_function(process, "launch_console_process"))
    assert "terminate_process_tree" in _called(_function(process, "cancel", "BackgroundProcess"))
    assert {"check_predictable", "write_compact", "predict_command"} <= _called(_function(process, "start_prediction"))
    defined = {n.name for n in ast.parse((LIB_DIR / "dependencies.py").read_text()).body
               if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & {"predict_command", "parse_progress_line", "ProgressEvent", "main"}


def test_the_slicer_layer_reads_the_prediction_folder_through_the_core():
    """One set of file names, the core's: no prediction file is named in the Slicer layer."""
    names = re.compile(r"(dose(_std)?\.nrrd|dvh\.csv|scorecard\.json|summary\.json|report\.png)")
    for path in [MODULE_FILE, *LIB_DIR.glob("*.py")]:
        assert not names.search(path.read_text()), path.name
    assert "read_prediction" in _called(_function(LIB_DIR / "prediction_folder.py", "add_prediction_folder"))


def test_help_text_says_what_it_does_with_prescriptions_unscorable_structures_and_segments_outside_the_dose():
    text = MODULE_FILE.read_text()
    help_text = text[text.index("self.parent.helpText"):text.index("self.parent.acknowledgementText")]
    for phrase in ("plan's\nprescription is used", "Structures it cannot score", "not evaluable",
                   "Segments outside the dose", "no voxel in a dose", "results are kept", "Apache-2.0"):
        assert phrase in help_text, phrase


def test_licence_screenshot_and_cmake_version():
    assert (ROOT / "LICENSE.txt").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)" in text  # Slicer 5.10's template
    urls = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', text).group(1).split()
    prefix = "https://raw.githubusercontent.com/DoseDiffusion/DoseDiffusion/main/"
    assert urls and all(u.startswith(prefix) and (ROOT / u[len(prefix):]).is_file() for u in urls)
