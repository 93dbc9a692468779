"""DoseDiffusion: radiotherapy dose prediction in 3D Slicer.

The module predicts a 3D dose (Gy) from a CT, its structures (a segmentation) and optionally an RT
plan (SlicerRT), and shows it as an RT dose volume, DVHs and a clinical scorecard beside the
reference dose. The work is done by the core package ``dosediffusion`` (``Logic/``), in a
background process (``dosediffusion predict``) or on a remote GPU worker (``dosediffusion serve``).

Layout follows the Extension Wizard's scripted-module template: the module, its parameter node,
widget, logic (usable without GUI: Python console, ``--no-main-window`` batch scripts) and test.
Scene-facing code lives in ``DoseDiffusionLib`` (no Qt there).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import ctk
import qt
import slicer
import vtk
from DoseDiffusionLib import dependencies  # makes ``import dosediffusion`` work (the core in Logic/)
from DoseDiffusionLib.widget_rules import SCORECARD_FILE
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: QSettings keys of the remote worker: its URL and the path of a token file (never the token itself).
SETTINGS_REMOTE_URL = "DoseDiffusion/RemoteURL"
SETTINGS_REMOTE_TOKEN_FILE = "DoseDiffusion/RemoteTokenFile"
#: The oldest 3D Slicer this module supports (Python 3.12, pydicom 2.4.4 bundled).
MINIMUM_SLICER = (5, 10)
DEVICE_CHOICES = ("auto", "cuda", "cpu", "remote")
SCORECARD_AUTO, SCORECARD_NONE = "auto", "none"


#
# DoseDiffusion
#


class DoseDiffusion(ScriptedLoadableModule):
    """Module description (title, category, help)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DoseDiffusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiotherapy")]
        self.parent.dependencies = []  # SlicerRT and PyTorch are optional at load time, checked on use
        self.parent.contributors = ["DoseDiffusion developers"]
        self.parent.helpText = _("""
Predicts the 3D dose (Gy) of a radiotherapy plan from the CT, the structures and, optionally, the RT plan,
with an Any2Any 3D diffusion transformer, and shows it with DVHs and a clinical scorecard beside the reference
dose. Not for clinical use. Needs 3D Slicer 5.10 or newer; SlicerRT for RT plans and doses, the PyTorch extension
for local prediction (or a remote DoseDiffusion worker). The bundled demo model was trained on synthetic plans only:
a demonstration, released with the code under the Apache-2.0 licence (LICENSE.txt). See the
<a href="https://github.com/DoseDiffusion/DoseDiffusion">documentation</a>.
<p><b>Prescription.</b> With the prescription and fractions at <i>automatic</i> (0), the selected plan's
prescription is used (all its dose levels and its fractions, from its RTPLAN file, else its RxDose), else the
PTV doses in the structure names (e.g. PTV_70): the same as the batch script. Selecting a plan sets both boxes
back to automatic and shows the plan's prescription; a value entered by hand is used instead and, when it is
not the plan's, the log says so.</p>
<p><b>Structures it cannot score.</b> A scorecard entry whose structure is missing, empty or has no role is
listed without a value or score (not evaluable, never scored as zero) and its points are left out of both the
total and the maximum; the prediction uses only the roles PTV, OAR and body (a structure set to <i>ignore</i> or
with an unknown name is not used).</p>
<p><b>Segments outside the dose.</b> SlicerRT's DVHs are computed for the segments that overlap each dose
grid; a segment with no voxel in a dose (common with a clinical RTDOSE) gets no curve for it and a warning
in the log, and the results are kept. The chart is SlicerRT's DVH engine, the scorecard DoseDiffusion's.</p>
<p>Results and exports belong to the CT and plan the dose was predicted from, whatever is selected later.</p>
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, SlicerRT and SlicerPyTorch. The layout of this module follows the Slicer Extension Wizard
template and the TotalSegmentator extension.
""")
        # the bundled demo case in the Sample Data module, registered once the application has started
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data
#


def registerSampleData() -> None:
    """The bundled demo case (a synthetic thorax: CT, RTSTRUCT, RTPLAN, RTDOSE) in Sample Data's
    Radiotherapy category; a click imports it into the DICOM database and loads it (:func:`loadDemoCase`)."""
    import SampleData

    resources = Path(__file__).resolve().parent / "Resources"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Radiotherapy", sampleName="DoseDiffusion demo case", uris=(resources / "DemoCase").as_uri(),
        fileNames="DemoCase", customDownloader=loadDemoCase,
        thumbnailFileName=str(resources / "Icons" / "DoseDiffusion.png"))


def loadDemoCase(source=None) -> None:
    """Load the bundled demo case's DICOM RT files (SlicerRT reads the structure set, plan and dose):
    copied into the open DICOM database (no entry points into the extension's folder, which an
    update replaces), else through a temporary database (closed again; the user's settings stay)."""
    import pydicom
    from DICOMLib import DICOMUtils

    folder = Path(__file__).resolve().parent / "Resources" / "DemoCase"
    patientID = str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).PatientID)
    database = getattr(slicer, "dicomDatabase", None)
    with slicer.util.tryWithErrorDisplay(_("Failed to load the DoseDiffusion demo case."), waitCursor=True):
        if database is not None and database.isOpen:
            if not DICOMUtils.importDicom(str(folder), database, copyFiles=True):
                raise RuntimeError(f"the DICOM database could not import {folder}")
            DICOMUtils.loadPatientByPatientID(patientID)
            return
        with DICOMUtils.TemporaryDICOMDatabase() as temporary:
            if not DICOMUtils.importDicom(str(folder), temporary, copyFiles=True):
                raise RuntimeError(f"the DICOM database could not import {folder}")
            DICOMUtils.loadPatientByPatientID(patientID)


#
# DoseDiffusionParameterNode
#


@parameterNodeWrapper
class DoseDiffusionParameterNode:
    """State of the module, saved with the scene (never the remote token: that is in QSettings).

    ctVolume - CT (HU). segmentation - structures. plan - SlicerRT RT plan (optional).
    referenceDose - the plan's own dose in Gy (optional). roles - JSON {segment name: [role, PTV dose Gy]}.
    prescriptionGy - highest prescribed dose, Gy (total); fractions - number of fractions; 0 in either
    is automatic (the plan's, else the PTV names': ``DoseDiffusionLib.widget_rules``).
    modelFolder - pipeline folder ("" = the bundled demo model). scorecard - "auto", "none", a shipped
    template name or "file" (then scorecardFile). device - auto/cuda/cpu/remote. steps, candidates - sampling.
    predictedDose, dvhChart, scorecardTable - the outputs of the last prediction.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    plan: slicer.vtkMRMLNode  # a vtkMRMLRTPlanNode (SlicerRT); the selector is synchronised by hand
    referenceDose: vtkMRMLScalarVolumeNode
    roles: str = ""
    prescriptionGy: Annotated[float, WithinRange(0.0, 200.0)] = 0.0
    fractions: Annotated[int, WithinRange(0, 100)] = 0
    modelFolder: str = ""
    scorecard: str = SCORECARD_AUTO
    scorecardFile: str = ""
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    steps: Annotated[int, WithinRange(1, 50)] = 10
    candidates: Annotated[int, WithinRange(1, 16)] = 1
    predictedDose: vtkMRMLScalarVolumeNode
    dvhChart: vtkMRMLPlotChartNode
    scorecardTable: vtkMRMLTableNode


#
# DoseDiffusionWidget
#


class DoseDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, structure roles, model and device, Predict/Cancel, outputs."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingRoles = False
        self._planPrescription = None  # the selected plan's dosediffusion.case.Prescription (None: no plan)
        self._job: dict[str, Any] | None = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onPollProcess)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        running = (slicer.app.majorVersion, slicer.app.minorVersion)
        if running < MINIMUM_SLICER:
            self.layout.addWidget(qt.QLabel(_("DoseDiffusion needs 3D Slicer {need} or newer (this is {this}): "
                                              "please install a current Slicer.").format(
                need=".".join(map(str, MINIMUM_SLICER)), this=".".join(map(str, running)))))
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DoseDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DoseDiffusionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # the plan selector lists vtkMRMLRTPlanNode (the .ui's nodeTypes); without SlicerRT it stays empty
        self.ui.planSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onPlanChanged)
        self.ui.planSelector.enabled = hasattr(slicer, "vtkMRMLRTPlanNode")
        table = self.ui.structureTable
        table.setColumnCount(3)
        table.setHorizontalHeaderLabels([_("Structure"), _("Role"), _("PTV dose (Gy)")])
        table.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.Stretch)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.refreshStructuresButton.connect("clicked(bool)", lambda _checked: self.fillStructureTable(True))

        self.ui.scorecardComboBox.addItem(_("automatic (matches the prescription)"), SCORECARD_AUTO)
        for name in self.logic.shippedScorecards():
            self.ui.scorecardComboBox.addItem(name, name)
        self.ui.scorecardComboBox.addItem(_("none"), SCORECARD_NONE)
        self.ui.scorecardComboBox.addItem(_("from file..."), SCORECARD_FILE)
        self.ui.scorecardComboBox.connect("currentIndexChanged(int)", self.onScorecardChanged)
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.scorecardPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.scorecardPathLineEdit.nameFilters = ["Scorecard (*.json)"]
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)

        settings = qt.QSettings()
        self.ui.remoteUrlLineEdit.text = settings.value(SETTINGS_REMOTE_URL, "")
        self.ui.remoteTokenFileLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.remoteTokenFileLineEdit.currentPath = settings.value(SETTINGS_REMOTE_TOKEN_FILE, "")
        self.ui.remoteUrlLineEdit.connect("editingFinished()", self.onRemoteSettingsChanged)
        self.ui.remoteTokenFileLineEdit.connect("currentPathChanged(QString)", lambda _path: self.onRemoteSettingsChanged())

        self.ui.predictButton.connect("clicked(bool)", self.onPredictButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.exportRtDoseButton.connect("clicked(bool)", self.onExportRtDoseButton)
        self.ui.exportToDatabaseButton.connect("clicked(bool)", self.onExportToDatabaseButton)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.hide()
        self.ui.cancelButton.enabled = False
        self.initializeParameterNode()
        self.onDeviceChanged()
        self.onScorecardChanged()

    def cleanup(self) -> None:
        if hasattr(self, "ui"):  # not on a Slicer too old to set the module up
            self.onCancelButton()
        self.removeObservers()

    def enter(self) -> None:
        if not hasattr(self, "ui"):  # a Slicer too old to set the module up
            return
        self.initializeParameterNode()
        if not self.ui.torchStatusLabel.text:  # once: importing torch takes a moment
            self.ui.torchStatusLabel.text = dependencies.torch_status()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()  # a run's results have no scene to go to
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        from DoseDiffusionLib.scene import find_scene_inputs

        self.setParameterNode(self.logic.getParameterNode())
        found = find_scene_inputs(slicer.mrmlScene, getattr(slicer, "dicomDatabase", None))
        if not self._parameterNode.ctVolume and found.ct:
            self._parameterNode.ctVolume = found.ct
        if not self._parameterNode.segmentation and found.segmentation:
            self._parameterNode.segmentation = found.segmentation

    def setParameterNode(self, inputParameterNode: DoseDiffusionParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._selectComboData(self.ui.scorecardComboBox, self._parameterNode.scorecard)
            self.ui.scorecardPathLineEdit.currentPath = self._parameterNode.scorecardFile
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelFolder
            self.ui.planSelector.setCurrentNode(self._parameterNode.plan)
            self.onPlanChanged(self._parameterNode.plan)  # its prescription note (the same plan: boxes kept)
            self.fillStructureTable(False)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        busy = self._job is not None
        ready = bool(self._parameterNode and self._parameterNode.ctVolume and self._parameterNode.segmentation)
        self.ui.predictButton.enabled = ready and not busy
        self.ui.predictButton.toolTip = _("Predict the dose") if ready else _("Select a CT and its structures")
        self.ui.cancelButton.enabled = busy
        self.ui.exportRtDoseButton.enabled = bool(self._parameterNode and self._parameterNode.predictedDose)
        self.ui.exportToDatabaseButton.enabled = self.ui.exportRtDoseButton.enabled

    @staticmethod
    def _selectComboData(combo, data: str) -> None:
        index = combo.findData(data)
        if index >= 0:
            combo.currentIndex = index

    def onPlanChanged(self, node=None) -> None:
        """A newly selected plan sets the prescription boxes to automatic (its prescription is used,
        all its levels) and shows its prescription (``widget_rules``)."""
        from DoseDiffusionLib.plan_adapter import read_plan
        from DoseDiffusionLib.widget_rules import AUTOMATIC, plan_prescription_note

        from dosediffusion.errors import InputError

        try:
            self._planPrescription = read_plan(node, getattr(slicer, "dicomDatabase", None)).prescription if node else None
            self.ui.prescriptionNoteLabel.text = plan_prescription_note(self._planPrescription)
        except InputError as error:  # e.g. an unreadable RTPLAN file: Predict reports it again
            self._planPrescription = None
            self.ui.prescriptionNoteLabel.text = _("The plan's prescription cannot be read: {error}").format(error=error)
        if self._parameterNode and self._parameterNode.plan is not node:
            self._parameterNode.plan = node
            self._parameterNode.prescriptionGy, self._parameterNode.fractions = float(AUTOMATIC), AUTOMATIC

    # ------------------------------------------------------------------ structure roles

    def onSegmentationChanged(self, node=None) -> None:
        # connected before the parameter node's own connector, so the parameter node may still hold the
        # previous segmentation here: the table is filled from ``node``
        if self._parameterNode and node is not self._lastSegmentation():
            self.fillStructureTable(True, node)

    def _lastSegmentation(self):
        return getattr(self, "_tableSegmentation", None)

    def fillStructureTable(self, reset: bool, segmentation=None) -> None:
        """One row per segment of ``segmentation`` (default: the parameter node's): name, role combo
        (ptv/oar/body/ignore), PTV dose; from the saved roles, or (``reset`` or new names) suggested from
        the names by the alias table."""
        from DoseDiffusionLib.scene import segment_names
        from DoseDiffusionLib.widget_rules import suggestion_levels

        from dosediffusion.roles import USER_ROLES, suggested_role

        if segmentation is None and self._parameterNode:
            segmentation = self._parameterNode.segmentation
        self._tableSegmentation = segmentation
        names = segment_names(segmentation) if segmentation else []
        saved = {} if reset else self._savedRoles()
        levels = suggestion_levels(self.ui.prescriptionSpinBox.value, self._planPrescription)
        suggested = {n: suggested_role(n, levels)[0] for n in names if n not in saved}
        table = self.ui.structureTable
        self._updatingRoles = True
        try:
            table.setRowCount(len(names))
            for row, name in enumerate(names):
                role, dose = saved.get(name) or (suggested[name].role, suggested[name].prescription_gy)
                item = qt.QTableWidgetItem(name)
                item.setFlags(item.flags() & ~qt.Qt.ItemIsEditable)
                table.setItem(row, 0, item)
                combo = qt.QComboBox()
                combo.addItems(list(USER_ROLES))
                combo.currentText = role
                combo.connect("currentIndexChanged(int)", lambda _index: self.onRolesEdited())
                table.setCellWidget(row, 1, combo)
                table.setItem(row, 2, qt.QTableWidgetItem("" if dose is None else f"{dose:g}"))
        finally:
            self._updatingRoles = False
        if not hasattr(self, "_rolesConnected"):
            table.connect("cellChanged(int,int)", lambda _r, _c: self.onRolesEdited())
            self._rolesConnected = True
        self.onRolesEdited()

    def _savedRoles(self) -> dict[str, tuple[str, float | None]]:
        try:
            return {k: (v[0], v[1]) for k, v in json.loads(self._parameterNode.roles or "{}").items()}
        except (ValueError, TypeError, IndexError):
            return {}

    def tableRoles(self) -> dict[str, tuple[str, float | None]]:
        """Segment name → (role, PTV dose in Gy or None) as the table shows them."""
        roles = {}
        table = self.ui.structureTable
        for row in range(table.rowCount):
            text = table.item(row, 2).text().strip() if table.item(row, 2) else ""
            try:
                dose = float(text) if text else None
            except ValueError:
                dose = None
            roles[table.item(row, 0).text()] = (table.cellWidget(row, 1).currentText, dose)
        return roles

    def roleChoices(self) -> dict:
        """The table's roles as the core's ``RoleChoice``s (what ``--role NAME=ROLE`` gives on a command line)."""
        from dosediffusion.roles import RoleChoice

        return {name: RoleChoice(role, dose if role == "ptv" else None) for name, (role, dose) in self.tableRoles().items()}

    def onRolesEdited(self) -> None:
        if self._updatingRoles or not self._parameterNode:
            return
        self._parameterNode.roles = json.dumps({n: [r, d] for n, (r, d) in self.tableRoles().items()})

    # ------------------------------------------------------------------ model, scorecard, device

    def onScorecardChanged(self, index=None) -> None:
        data = self.ui.scorecardComboBox.currentData
        self.ui.scorecardPathLineEdit.enabled = data == SCORECARD_FILE
        if self._parameterNode and data:
            self._parameterNode.scorecard = data

    def onDeviceChanged(self, index=None) -> None:
        remote = self.ui.deviceComboBox.currentText == "remote"
        self.ui.remoteUrlLineEdit.enabled = remote
        self.ui.remoteTokenFileLineEdit.enabled = remote

    def onRemoteSettingsChanged(self) -> None:
        settings = qt.QSettings()
        settings.setValue(SETTINGS_REMOTE_URL, self.ui.remoteUrlLineEdit.text.strip())
        settings.setValue(SETTINGS_REMOTE_TOKEN_FILE, self.ui.remoteTokenFileLineEdit.currentPath)

    def _scorecardOption(self) -> str:
        from DoseDiffusionLib.widget_rules import scorecard_option

        return scorecard_option(self.ui.scorecardComboBox.currentData or SCORECARD_AUTO,
                                self.ui.scorecardPathLineEdit.currentPath)

    # ------------------------------------------------------------------ prediction in the background

    def onPredictButton(self) -> None:
        """Build the case from the scene and have the Logic predict it in a background process; missing
        Python packages are installed first, in the background as well (after asking)."""
        from DoseDiffusionLib.widget_rules import prescription_arguments

        with slicer.util.tryWithErrorDisplay(_("Failed to start the dose prediction."), waitCursor=True):
            scorecard = self._scorecardOption()  # a mistake in the options before anything is installed
            if importlib.util.find_spec("torch") is None:
                # SlicerPyTorch installs in this process: the window does not respond until it is done
                self.ui.statusLabel.text = _("Installing PyTorch: Slicer does not respond until it is done "
                                             "(minutes; the Python console shows its progress)")
                slicer.app.processEvents()
            dependencies.ensure_torch()
            importlib.invalidate_caches()  # packages a background install has just added
            missing = dependencies.missing_requirements(dependencies.read_requirements())
            if missing:
                if not slicer.util.confirmOkCancelDisplay(
                        _("DoseDiffusion needs these Python packages, which will be installed into Slicer's Python "
                          "now:") + "\n\n" + "\n".join(missing), _("DoseDiffusion: install Python packages")):
                    return
                self._installPackages(missing)
                return
            p = self._parameterNode
            p.modelFolder = self.ui.modelPathLineEdit.currentPath
            p.scorecardFile = self.ui.scorecardPathLineEdit.currentPath
            prescriptionGy, fractions = prescription_arguments(p.prescriptionGy, p.fractions)
            case = self.logic.caseFromScene(p.ctVolume, p.segmentation, p.plan, self.roleChoices(), prescriptionGy,
                                            fractions, p.referenceDose)
            device = self.ui.deviceComboBox.currentText
            process = self.logic.startPrediction(case, p.modelFolder, p.steps, p.candidates, device, scorecard,
                                                 remoteUrl=self.ui.remoteUrlLineEdit.text.strip() or None,
                                                 tokenFile=self.ui.remoteTokenFileLineEdit.currentPath or None)
            # the results go to the CT, plan and prescription of now, whatever the selectors show when it ends
            job = {"process": process, "ctVolume": p.ctVolume, "segmentation": p.segmentation,
                   "referenceDose": p.referenceDose, "plan": p.plan, "prescriptionGy": case.prescription.high_gy}
            job["onSuccess"] = lambda update: self.showResults(job, update.result)
            self._watchProcess(job, _("Starting..."))

    def _installPackages(self, missing: list[str]) -> None:
        """Install ``missing`` (the Logic's :meth:`~DoseDiffusionLogic.installPackages`: in this process on
        Slicer 5.12+, else in the background), then predict."""
        before = dependencies.installed_versions()
        process = self.logic.installPackages(missing)
        if process is None:
            self._afterInstall(before)
            return
        self._watchProcess({"process": process, "onSuccess": lambda update: self._afterInstall(before)},
                           _("Installing Python packages..."))

    def _afterInstall(self, before: dict[str, str]) -> None:
        importlib.invalidate_caches()
        changed = dependencies.restart_needed(before, dependencies.installed_versions())
        if changed:
            slicer.util.warningDisplay(_("The install changed packages that are already in use: {names}. Restart "
                                         "Slicer, then predict.").format(names=", ".join(changed)))
            return
        self.onPredictButton()

    def _watchProcess(self, job: dict[str, Any], status: str) -> None:
        """Follow the Logic's background process: a QTimer polls it (the GUI stays responsive) and
        ``job["onSuccess"]`` runs with its last update when it ends with 0."""
        self._job = job
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.logTextEdit.clear()
        self.ui.statusLabel.text = status
        self._checkCanApply()
        self._timer.start()

    def onPollProcess(self) -> None:
        job = self._job
        update = self.logic.pollProcess() if job is not None else None
        if update is None:
            self._timer.stop()
            return
        for event in update.events:
            self.ui.progressBar.value = int(100 * event.fraction)
            self.ui.statusLabel.text = event.message
        for line in update.lines:
            self.ui.logTextEdit.appendPlainText(line)
        if update.returncode is None:
            return
        self._timer.stop()
        self._job = None
        try:
            if update.returncode != 0:
                slicer.util.errorDisplay(_("The background process failed (exit code {code}).").format(
                    code=update.returncode), detailedText=update.tail)
                self.ui.statusLabel.text = _("Failed")
                return
            with slicer.util.tryWithErrorDisplay(_("Failed to continue after the background process."), waitCursor=True):
                self.ui.statusLabel.text = _("Done")
                job["onSuccess"](update)
        finally:
            self.logic.closeProcess(job["process"])  # its work folder (the results are in the scene now)
            if self._job is None:
                self.ui.progressBar.hide()
            self._checkCanApply()

    def showResults(self, job: dict[str, Any], folder: Path | None) -> None:
        if folder is None:
            raise RuntimeError("the background process ended without writing its prediction folder")
        doseNode, chart, table = self.logic.addPredictionFolder(folder, job["ctVolume"], job["prescriptionGy"],
                                                                job["segmentation"], job["referenceDose"], job["plan"])
        if self._parameterNode:
            p = self._parameterNode
            p.predictedDose, p.dvhChart, p.scorecardTable = doseNode, chart, table
        slicer.util.setSliceViewerLayers(background=job["ctVolume"], foreground=doseNode, foregroundOpacity=0.5)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            appLogic = slicer.app.applicationLogic()
            appLogic.GetSelectionNode().SetActiveTableID(table.GetID() if table else None)
            appLogic.PropagateTableSelection()

    def onCancelButton(self) -> None:
        """Stop the background process: the Logic ends its whole process tree and removes its work folder."""
        self._job = None
        self._timer.stop()
        if self.logic is not None and self.logic.cancelProcess():
            self.ui.statusLabel.text = _("Cancelled")
            self.ui.progressBar.hide()
        self._checkCanApply()

    # ------------------------------------------------------------------ export

    def onExportRtDoseButton(self) -> None:
        p = self._parameterNode
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export predicted dose as RTDOSE"),
                                              "RTDOSE.dcm", "DICOM (*.dcm)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to export the RTDOSE."), waitCursor=True):
            written = self.logic.exportRtDose(p.predictedDose, path)  # on the CT and plan it was predicted from
            self.ui.statusLabel.text = _("Exported {path}").format(path=written)

    def onExportToDatabaseButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to add the RTDOSE to the DICOM database."), waitCursor=True):
            self.logic.exportRtDoseToDatabase(p.predictedDose)
            self.ui.statusLabel.text = _("The predicted RTDOSE is in the DICOM database, in its CT's study")


#
# DoseDiffusionLogic
#


class DoseDiffusionLogic(ScriptedLoadableModuleLogic):
    """Everything the module computes, without Qt: usable from the Python console and batch scripts.

    ``case = logic.caseFromScene(ct, segmentation)``; ``logic.predict(case, folder)`` (in this process), or
    ``logic.startPrediction(case)`` and ``logic.pollProcess()`` until its ``returncode`` is set (a background
    process; ``logic.cancelProcess()`` ends it); ``logic.addPredictionFolder(folder)`` → (dose node, DVH
    chart, scorecard table).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._predictors: dict = {}
        self.backgroundProcess = None  # the running DoseDiffusionLib.process.BackgroundProcess, one at a time

    def getParameterNode(self):
        return DoseDiffusionParameterNode(super().getParameterNode())

    @staticmethod
    def modelFolder(folder: str | None = None) -> Path:
        """The pipeline folder: ``folder``, or the bundled demo model when empty or ``demo`` (an error when
        it is not a pipeline folder)."""
        from dosediffusion.prediction.model_folder import resolve_model_folder

        return resolve_model_folder(folder)

    @staticmethod
    def shippedScorecards() -> list[str]:
        """Names of the scorecard templates shipped in ``Resources/Scorecards``."""
        from dosediffusion.metrics.scorecard import shipped_templates

        return shipped_templates()

    def caseFromScene(self, ctVolume, segmentation, plan=None, roles=None, prescriptionGy=None, fractions=None,
                      referenceDose=None, aliases=None):
        """The core Case of the scene's nodes (see ``DoseDiffusionLib.scene.case_from_scene``): ``roles`` maps
        segment names to ``dosediffusion.roles.RoleChoice``; ``aliases`` is an alias table (default: shipped)."""
        from DoseDiffusionLib.scene import case_from_scene

        if not ctVolume or not segmentation:
            raise ValueError("select a CT volume and its segmentation")
        return case_from_scene(ctVolume, segmentation, plan, roles, prescriptionGy or None, fractions, referenceDose,
                               dicom_database=getattr(slicer, "dicomDatabase", None), aliases=aliases)

    def predict(self, case, outFolder, modelFolder: str | None = None, steps: int = 10, candidates: int = 1,
                device: str = "auto", seed: int = 0, scorecard: str | None = SCORECARD_AUTO, progress=None,
                cancel=None, overwrite: bool = False, report: bool = False) -> dict:
        """Predict in this process (blocks; for the console, batch mode and the self-test) through the core's
        one prediction path, which checks the case first and writes ``outFolder`` exactly as ``dosediffusion
        predict`` does; returns its summary. Show the result with :meth:`addPredictionFolder`."""
        from dosediffusion.prediction.predictors import LocalPredictor
        from dosediffusion.prediction.run import predict_to_folder

        predictor = self._predictors.get((modelFolder, device))
        if predictor is None:  # loaded once per model and device, for a batch of patients
            predictor = self._predictors[(modelFolder, device)] = LocalPredictor(modelFolder, device)
        return predict_to_folder(case, predictor, outFolder, scorecard, steps=steps, seed=seed, candidates=candidates,
                                 report=report, overwrite=overwrite, progress=progress, cancel=cancel,
                                 status=lambda message: logging.info(f"DoseDiffusion: {message}"))

    def startPrediction(self, case, modelFolder: str | None = None, steps: int = 10, candidates: int = 1,
                        device: str = "auto", scorecard: str | None = SCORECARD_AUTO, seed: int = 0,
                        remoteUrl: str | None = None, tokenFile: str | None = None):
        """Predict ``case`` in a background process (``DoseDiffusionLib.process.start_prediction``: the case is
        checked first, and the child receives it whole, with its DICOM identifiers, so that its RTDOSE is on the
        CT's study and frame of reference); ``device`` ``remote`` predicts on the worker at ``remoteUrl`` (its
        token in ``tokenFile``). Returns the process; :meth:`pollProcess` follows it, :meth:`cancelProcess` ends
        it, and once it has ended, :meth:`addPredictionFolder` shows the folder of its last update's ``result``
        and :meth:`closeProcess` removes its work folder."""
        from DoseDiffusionLib.process import start_prediction

        self._checkIdle()
        remote = device == "remote"
        if remote and not remoteUrl:
            raise ValueError("enter the URL of the remote DoseDiffusion worker")
        for warning in case.warnings:
            logging.warning(f"DoseDiffusion: {warning}")
        self.backgroundProcess = start_prediction(case, self.modelFolder(modelFolder), steps, candidates,
                                                  "auto" if remote else device, scorecard, seed,
                                                  remoteUrl if remote else None, tokenFile if remote else None)
        logging.info("DoseDiffusion: " + " ".join(self.backgroundProcess.command))
        return self.backgroundProcess

    def installPackages(self, requirements: list[str]):
        """Install ``requirements`` into Slicer's Python: on Slicer 5.12+ through ``slicer.packaging`` (Slicer's
        own constraints; it blocks, asks again, and None is returned), else by pip in a background process
        constrained to every installed version (``DoseDiffusionLib.process.start_install``), which is returned
        and followed as a prediction is."""
        from DoseDiffusionLib.process import start_install

        self._checkIdle()
        try:
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if dependencies.uses_slicer_packaging((slicer.app.majorVersion, slicer.app.minorVersion), packaging):
            packaging.pip_install(list(requirements))
            return None
        self.backgroundProcess = start_install(requirements)
        logging.info("DoseDiffusion: " + " ".join(self.backgroundProcess.command))
        return self.backgroundProcess

    def _checkIdle(self) -> None:
        if self.backgroundProcess is not None:
            raise RuntimeError("a background process is running: wait for it to end or cancel it")

    def pollProcess(self):
        """What the background process said since the last call (``DoseDiffusionLib.process.ProcessUpdate``:
        progress events, log lines; once it has ended its ``returncode``, the last lines of its log and, for a
        prediction that succeeded, the ``result`` folder); None when none runs. Once it has ended, another may
        start; its work folder stays until :meth:`closeProcess`."""
        process = self.backgroundProcess
        if process is None:
            return None
        update = process.poll()
        if update.returncode is not None:
            self.backgroundProcess = None
        return update

    @staticmethod
    def closeProcess(process) -> None:
        """Remove an ended background process's work folder (its results taken)."""
        process.close()

    def cancelProcess(self) -> bool:
        """End the background process with everything it started (the launcher and the Python it runs, so that
        nothing keeps the GPU or writes afterwards) and remove its work folder; False when none runs."""
        process, self.backgroundProcess = self.backgroundProcess, None
        if process is None:
            return False
        process.cancel()
        return True

    def addPredictionFolder(self, folder, referenceVolume=None, prescriptionGy: float | None = None, segmentation=None,
                            referenceDose=None, plan=None):
        """The prediction folder's dose volume (RT dose), DVH chart (in the segments' colours) and scorecard
        table (None without a scorecard) in the scene, in place of the previous prediction of the CT
        ``referenceVolume`` (``DoseDiffusionLib.prediction_folder``; the nodes reference that CT and ``plan``,
        which the export uses); with SlicerRT, the chart is SlicerRT's own DVHs of the predicted and the
        reference dose for the segments inside each (``DoseDiffusionLib.slicerrt_dvh``), and the module's own
        chart is removed. Returns the three nodes."""
        from DoseDiffusionLib.prediction_folder import add_prediction_folder, chart_nodes
        from DoseDiffusionLib.slicerrt_dvh import remove_nodes

        doseNode, chart, table = add_prediction_folder(slicer.mrmlScene, folder, referenceVolume, prescriptionGy,
                                                       segmentation, plan_node=plan)
        slicerRtChart = self.slicerRtDvhChart(doseNode, segmentation, referenceDose, referenceVolume, plan)
        if slicerRtChart is None:
            return doseNode, chart, table
        remove_nodes(slicer.mrmlScene, chart_nodes(chart))
        return doseNode, slicerRtChart, table

    @staticmethod
    def slicerRtDvhChart(doseNode, segmentation, referenceDose=None, ctVolume=None, plan=None):
        """SlicerRT's DVHs (its Dose Volume Histogram module's logic: DVH tables that its DVH comparison
        reads, curves in the segments' colours, named "<segment> (predicted|reference)") of the predicted and,
        when given, the reference dose, for the segments inside each dose (a warning for the others), in one
        chart; None without SlicerRT or a segmentation, or when SlicerRT fails (the module's own chart stays)."""
        from DoseDiffusionLib.slicerrt_dvh import add_slicerrt_dvhs

        module = getattr(slicer.modules, "dosevolumehistogram", None)
        if module is None or segmentation is None:
            return None
        doses = [(doseNode, "predicted")] + ([(referenceDose, "reference")] if referenceDose is not None else [])
        made = add_slicerrt_dvhs(slicer.mrmlScene, module.logic(), doses, segmentation, ctVolume, plan)
        for warning in made.warnings:
            logging.warning(f"DoseDiffusion: {warning}")
        return made.chart

    def exportRtDoseToDatabase(self, doseNode) -> None:
        """Write ``doseNode`` as RTDOSE in its CT's DICOM study (:meth:`exportRtDose`) and add it to
        ``slicer.dicomDatabase``, as Slicer's DICOM export dialog adds what it writes (copying the file);
        the DICOM browser then shows it under the CT's patient and study."""
        from DICOMLib import DICOMUtils

        if getattr(slicer, "dicomDatabase", None) is None or not slicer.dicomDatabase.isOpen:
            raise ValueError("no DICOM database is open: open the DICOM module once, or export to a file")
        folder = Path(tempfile.mkdtemp(prefix="DoseDiffusion-RTDOSE-"))
        try:
            self.exportRtDose(doseNode, folder / "RTDOSE.dcm")
            if not DICOMUtils.importDicom(str(folder), slicer.dicomDatabase, copyFiles=True):
                raise RuntimeError("the DICOM database did not import the RTDOSE (see the Python console); "
                                   "export it to a file instead")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def exportRtDose(doseNode, path: str | os.PathLike = "RTDOSE.dcm") -> Path:
        """Write ``doseNode`` (Gy) as an RTDOSE file on the study and frame of reference of the CT it was
        predicted from (when that CT came from DICOM), referencing that plan's RTPLAN when it has one
        (``DoseDiffusionLib.export``)."""
        from DoseDiffusionLib.export import export_rtdose

        return export_rtdose(doseNode, path, getattr(slicer, "dicomDatabase", None))


#
# DoseDiffusionTest
#


class DoseDiffusionTest(ScriptedLoadableModuleTest):
    """Loads the bundled demo DICOM RT case, predicts on CPU with the demo model, checks the outputs."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run the tests; a skip (no PyTorch) is reported as a skip, not as the failure popup that Reload
        and Test shows for any exception (Slicer's ``onReloadAndTest`` calls this method directly)."""
        import unittest

        self.setUp()
        try:
            self.test_DoseDiffusionDemoCase()
        except unittest.SkipTest as skip:
            self.delayDisplay(f"Test skipped: {skip}")

    def test_DoseDiffusionDemoCase(self):
        from dosediffusion.resources import resource_path

        self.delayDisplay("Starting the test")
        if importlib.util.find_spec("torch") is None:  # e.g. on the extension build machines
            self.skipTest("PyTorch is not installed (install the PyTorch extension): the prediction is not tested")
        logic = DoseDiffusionLogic()
        logic.modelFolder("demo")  # the bundled demo model must be there: an error names what is missing
        from DICOMLib import DICOMUtils

        with DICOMUtils.TemporaryDICOMDatabase() as database:
            DICOMUtils.importDicom(str(resource_path("DemoCase")), database)
            patients = database.patients()
            self.assertTrue(patients, "the demo case was not imported")
            DICOMUtils.loadPatientByUID(patients[0])
            self.delayDisplay("Loaded the demo case")

            from DoseDiffusionLib.scene import find_scene_inputs

            found = find_scene_inputs(slicer.mrmlScene, database)
            ct = found.ct
            self.assertIsNotNone(ct)
            self.assertIsNotNone(found.segmentation)
            self.assertIsNotNone(found.reference_dose)
            # built while the temporary DICOM database is open: it finds the RTPLAN file and the UIDs
            case = logic.caseFromScene(ct, found.segmentation, found.plan, referenceDose=found.reference_dose)
        self.assertTrue(case.structures)
        outFolder = Path(tempfile.mkdtemp(prefix="DoseDiffusionTest-")) / "prediction"
        try:
            logic.predict(case, outFolder, "demo", steps=2, device="cpu")
            doseNode, chart, table = logic.addPredictionFolder(outFolder, ct, segmentation=found.segmentation,
                                                               referenceDose=found.reference_dose, plan=found.plan)
        finally:
            shutil.rmtree(outFolder.parent, ignore_errors=True)

        self.assertEqual(doseNode.GetAttribute("DicomRtImport.DoseVolume"), "1")
        array = slicer.util.arrayFromVolume(doseNode)
        self.assertEqual(array.shape, slicer.util.arrayFromVolume(ct).shape)
        self.assertGreater(float(array.max()), 0.0)
        ctMatrix, doseMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        ct.GetIJKToRASMatrix(ctMatrix)
        doseNode.GetIJKToRASMatrix(doseMatrix)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(ctMatrix.GetElement(row, column), doseMatrix.GetElement(row, column), 4)
        nonEmpty = [n for n, s in case.structures.items() if s.mask.any()]
        # a predicted and a reference curve per structure (SlicerRT's DVHs, or the module's own without it)
        self.assertGreaterEqual(chart.GetNumberOfPlotSeriesNodes(), 2 * len(nonEmpty))
        if table is not None:
            self.assertEqual(table.GetTable().GetValue(table.GetNumberOfRows() - 1, 0).ToString(), "Total")
        self.delayDisplay("Test passed")
