"""SegmentationSuite model manager: the 3D Slicer module (GUI wiring only; actions run in segsuite).

Every call to the model manager runs in a child process polled by a QTimer (the listing too), so
the GUI never waits; the listing needs only the packages Slicer bundles.
"""

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
        self.parent.title = "SegmentationSuite Models"  # Slicer has a core "Models" module
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
        self.listing = None  # the running `segsuite models list` / `models path`, polled by queryTimer
        self.listingDone = None
        self.queryTimer = qt.QTimer()
        self.queryTimer.setInterval(100)
        self.queryTimer.timeout.connect(self.onQueryPoll)
        self.models = []
        self.refresh()

    def enter(self):
        if not self.models and self.listing is None:
            self.refresh()

    def exit(self):
        pass  # a running action keeps running; its timer keeps updating the table

    def startQuery(self, command, on_done):
        """Run a `segsuite models` query off the GUI thread; ``on_done(stdout)`` when it succeeded."""
        if self.listing is not None:
            self.ui.statusLabel.text = "The model manager is still answering; try again in a moment."
            return
        try:
            self.listing = command.start()
        except Exception as error:
            self.ui.statusLabel.text = f"Could not ask the model manager: {error}"
            return
        self.listingDone = on_done
        self.queryTimer.start()

    def onQueryPoll(self):
        try:
            output = self.listing.poll()
        except Exception as error:
            self.queryTimer.stop()
            self.listing = None
            self.ui.refreshButton.enabled = True
            self.ui.statusLabel.text = f"The model manager failed: {error}"
            log.error("SegmentationSuite models: %s", error)
            return
        if output is None:
            return
        self.queryTimer.stop()
        self.listing = None
        try:
            self.listingDone(output)
        except Exception as error:
            self.ui.statusLabel.text = f"Could not read the model manager's answer: {error}"
            log.error("SegmentationSuite models: %s", error)

    def selectedModelId(self):
        row = self.ui.modelsTable.currentRow()
        return self.models[row].get("id", "") if 0 <= row < len(self.models) else ""

    def refresh(self, keep_status=False):
        if not keep_status:  # after an action its outcome stays in the status line
            self.ui.statusLabel.text = "Reading the model list..."
        self.ui.refreshButton.enabled = False
        self.startQuery(models_client.ModelsCommand(["models", "list", "--json"], python=slicer_python()),
                        self.showModels)
        if self.listing is None:
            self.ui.refreshButton.enabled = True

    def showModels(self, output):
        self.ui.refreshButton.enabled = True
        self.models = models_client.parse_listing(output)
        rows = models_client.model_rows(self.models)
        self.ui.modelsTable.setRowCount(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                self.ui.modelsTable.setItem(row, column, qt.QTableWidgetItem(value))
        self.ui.modelsTable.resizeColumnsToContents()
        if self.ui.statusLabel.text == "Reading the model list...":
            self.ui.statusLabel.text = f"{len(self.models)} models."
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
        # Actions that write the cache take its lock (filelock, not bundled with Slicer); listing needs nothing.
        from segsuite_slicer.install import ensure_requirements
        problem = self.logic.start(action, model_id, path, ensure_requirements=ensure_requirements)
        if problem:
            self.ui.statusLabel.text = problem
            slicer.util.errorDisplay(problem, windowTitle="Model manager")
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
                self.refresh(keep_status=True)

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
        def open_folder(output):
            folder = models_client.cache_folder_from_output(output)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))

        self.startQuery(models_client.ModelsCommand(["models", "path"], python=slicer_python()), open_folder)

    def cleanup(self):
        self.timer.stop()
        self.queryTimer.stop()
        if self.listing is not None:
            self.listing.cancel()
        self.logic.stop()


class SegmentationSuiteModelsLogic(models_client.ModelActions, ScriptedLoadableModuleLogic):
    """Start / cancel (never blocking the GUI thread) / stop: segsuite_slicer.models_client.ModelActions."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        models_client.ModelActions.__init__(self)

    def start(self, action, model_id="", path="", ensure_requirements=None):
        return models_client.ModelActions.start(self, action, model_id, path, python=slicer_python(),
                                                ensure_requirements=ensure_requirements)


class SegmentationSuiteModelsTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_list_models()
        self.test_verify_and_cache_folder()

    def test_list_models(self):
        """The listing in Slicer's own Python, polled as the widget does (no requirement installed first)."""
        command = models_client.start_listing(python=slicer_python())
        while True:
            output = command.poll()
            if output is not None:
                break
            slicer.app.processEvents()
        models = models_client.parse_listing(output)
        by_id = {model.get("id"): model for model in models}
        for model_id in ("synthseg-2.0", "sclimbic"):
            self.assertIn(model_id, by_id)
            self.assertIn(by_id[model_id].get("status"), ("installed", "not installed"))
        self.assertEqual(len(models_client.model_rows(models)), len(models))
        self.delayDisplay("Model list test passed")

    def test_verify_and_cache_folder(self):
        import os

        runner = models_client.start_action("verify", python=slicer_python())
        runner.run(timeout=600)  # raises unless verify succeeds (nothing installed verifies too)
        self.assertTrue(os.path.isabs(models_client.cache_folder(python=slicer_python())))
        self.delayDisplay("Model verify test passed")
