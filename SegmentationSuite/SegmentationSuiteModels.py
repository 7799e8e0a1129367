"""SegmentationSuite model manager: the 3D Slicer module (GUI wiring only; actions run in segsuite)."""

import logging

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

from segsuite_slicer import models_client
from segsuite_slicer.engine_run import slicer_python

log = logging.getLogger("SegmentationSuite")


class SegmentationSuiteModels(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Models"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Every model SegmentationSuite can use, with its status, size, licence and citation. "
                                "Download (checksums verified), install from a file, import from a FreeSurfer "
                                "installation, verify or remove models, and open the cache folder.")
        self.parent.acknowledgementText = "See each model's citation and licence in the table."


class SegmentationSuiteModelsWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = SegmentationSuiteModelsLogic()
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/SegmentationSuiteModels.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        self.ui.modelsTable.setColumnCount(len(models_client.COLUMNS))
        self.ui.modelsTable.setHorizontalHeaderLabels(models_client.COLUMNS)
        self.ui.modelsTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.modelsTable.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.ui.modelsTable.itemSelectionChanged.connect(self.onSelectionChanged)
        self.ui.refreshButton.clicked.connect(self.refresh)
        self.ui.downloadButton.clicked.connect(lambda: self.runAction("download"))
        self.ui.installFileButton.clicked.connect(self.onInstallFromFile)
        self.ui.importFreeSurferButton.clicked.connect(self.onImportFreeSurfer)
        self.ui.verifyButton.clicked.connect(lambda: self.runAction("verify"))
        self.ui.removeButton.clicked.connect(self.onRemove)
        self.ui.openCacheButton.clicked.connect(self.onOpenCache)
        self.ui.cancelButton.clicked.connect(self.logic.cancel)
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.onPoll)
        self.models = []
        self.refresh()

    def selectedModelId(self):
        row = self.ui.modelsTable.currentRow()
        return self.models[row].get("id", "") if 0 <= row < len(self.models) else ""

    def refresh(self):
        try:
            with slicer.util.WaitCursor():
                self.models = models_client.list_models(python=slicer_python())
        except Exception as error:
            self.models = []
            self.ui.statusLabel.text = f"Could not list the models: {error}"
            log.error("SegmentationSuite models: %s", error)
        rows = models_client.model_rows(self.models)
        self.ui.modelsTable.setRowCount(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                self.ui.modelsTable.setItem(row, column, qt.QTableWidgetItem(value))
        self.ui.modelsTable.resizeColumnsToContents()
        self.onSelectionChanged()

    def onSelectionChanged(self):
        model_id = self.selectedModelId()
        for button in (self.ui.downloadButton, self.ui.installFileButton, self.ui.removeButton):
            button.enabled = bool(model_id) and not self.logic.busy()
        model = next((m for m in self.models if m.get("id") == model_id), {})
        self.ui.detailsBrowser.setHtml(
            f"<b>{model_id}</b><br>Licence: {model.get('licence', '')}<br>Citation: {model.get('citation', '')}"
            + (f"<br>Source: {model.get('url', '')}" if model.get("url") else ""))

    def runAction(self, action, path=""):
        if self.logic.busy():
            return
        model_id = self.selectedModelId()
        try:
            self.logic.start(action, model_id, path)
        except Exception as error:
            slicer.util.errorDisplay(f"Could not start: {error}")
            return
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self.ui.cancelButton.enabled = True
        self.ui.statusLabel.text = f"{action} {model_id}..."
        self.timer.start()

    def onPoll(self):
        from segsuite.runner import FinishedEvent, LogEvent, ProgressEvent

        for event in self.logic.runner.poll():
            if isinstance(event, ProgressEvent):
                self.ui.progressBar.value = int(round(100 * event.fraction))
                self.ui.statusLabel.text = event.message
            elif isinstance(event, LogEvent):
                log.info("%s", event.line)
            elif isinstance(event, FinishedEvent):
                self.timer.stop()
                self.ui.progressBar.visible = False
                self.ui.cancelButton.enabled = False
                runner = self.logic.runner
                if runner.cancelled:
                    self.ui.statusLabel.text = "Cancelled."
                elif event.returncode != 0:
                    self.ui.statusLabel.text = runner.error_message()
                    slicer.util.errorDisplay(runner.error_message(), windowTitle="Model manager")
                else:
                    self.ui.statusLabel.text = "Done. " + " ".join(runner.log[-2:])
                self.refresh()

    def onInstallFromFile(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Model file to install")
        if path:
            self.runAction("install", path)

    def onImportFreeSurfer(self):
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "FreeSurfer installation ($FREESURFER_HOME)")
        if path:
            self.runAction("import-freesurfer", path)

    def onRemove(self):
        model_id = self.selectedModelId()
        if model_id and slicer.util.confirmOkCancelDisplay(f"Remove the model {model_id} from the cache?"):
            self.runAction("remove")

    def onOpenCache(self):
        try:
            folder = models_client.cache_folder(python=slicer_python())
        except Exception as error:
            slicer.util.errorDisplay(str(error))
            return
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))

    def cleanup(self):
        self.timer.stop()
        self.logic.cancel()


class SegmentationSuiteModelsLogic(ScriptedLoadableModuleLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.runner = None

    def busy(self):
        return self.runner is not None and self.runner.running

    def start(self, action, model_id="", path=""):
        self.runner = models_client.start_action(action, model_id, path, python=slicer_python())
        return self.runner

    def cancel(self):
        if self.busy():
            self.runner.cancel()


class SegmentationSuiteModelsTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_list_models()

    def test_list_models(self):
        models = models_client.list_models(python=slicer_python())
        ids = [model.get("id") for model in models]
        self.assertIn("synthseg-2.0", ids)
        self.delayDisplay("Model list test passed")
