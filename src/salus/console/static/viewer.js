// Salus image viewer: one image at a time from the DICOMweb rendered resource
// (PS3.18 10.4.1.1.4) with window=center,width,linear. Plain JavaScript.
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  if (!root) return;
  var study = root.getAttribute("data-study");
  var buttons = Array.prototype.slice.call(root.querySelectorAll("button.series"));
  var image = document.getElementById("image");
  var frame = document.getElementById("frame");
  var slider = document.getElementById("slice");
  var sliceLabel = document.getElementById("slice-label");
  var preset = document.getElementById("preset");
  var wc = document.getElementById("wc");
  var ww = document.getElementById("ww");
  var state = { series: 0, index: 0, center: null, width: null };

  function current() { return buttons[state.series]; }
  function instances() { return current().getAttribute("data-instances").split(" "); }

  function url() {
    var button = current();
    var path = "/dicomweb/studies/" + study + "/series/" + button.getAttribute("data-series") +
      "/instances/" + instances()[state.index] + "/rendered";
    if (state.center !== null && state.width !== null) {
      path += "?window=" + encodeURIComponent(state.center + "," + state.width + ",linear");
    }
    return path;
  }

  function show() {
    var list = instances();
    state.index = Math.max(0, Math.min(list.length - 1, state.index));
    slider.max = String(list.length);
    slider.value = String(state.index + 1);
    sliceLabel.textContent = (state.index + 1) + " / " + list.length;
    wc.value = state.center === null ? "" : String(Math.round(state.center));
    ww.value = state.width === null ? "" : String(Math.round(state.width));
    var key = state.center === null ? "" : Math.round(state.center) + "," + Math.round(state.width);
    var option = key && preset.querySelector('optgroup:not([hidden]) option[value="' + key + '"]');
    preset.value = option ? key : "";
    var next = url();
    if (image.getAttribute("src") !== next) image.setAttribute("src", next);
    root.setAttribute("data-index", String(state.index));
    root.setAttribute("data-window", state.center === null ? "" : state.center + "," + state.width);
  }

  function filterPresets() {
    var modality = current().getAttribute("data-modality");
    Array.prototype.forEach.call(preset.querySelectorAll("optgroup"), function (group) {
      var match = group.getAttribute("data-modality") === modality;
      group.hidden = !match;
      group.disabled = !match;
    });
    preset.value = "";
  }

  function selectSeries(n) {
    state.series = (n + buttons.length) % buttons.length;
    state.index = 0;
    buttons.forEach(function (b, i) { b.setAttribute("aria-pressed", i === state.series ? "true" : "false"); });
    filterPresets();
    var group = preset.querySelector('optgroup[data-modality="' + current().getAttribute("data-modality") + '"]');
    if (group && group.querySelector("option")) {
      var parts = group.querySelector("option").value.split(",");
      state.center = Number(parts[0]); state.width = Number(parts[1]);
      preset.value = group.querySelector("option").value;
    } else {
      state.center = null; state.width = null;
    }
    show();
  }

  function scroll(step) { state.index += step; show(); }

  function setWindow(center, width) {
    if (!isFinite(center) || !isFinite(width)) return;
    state.center = center;
    state.width = Math.max(1, width);
    show();
  }

  function baseWindow() {
    // Start from the current window, else a neutral one for the modality.
    if (state.center !== null) return [state.center, state.width];
    return current().getAttribute("data-modality") === "CT" ? [40, 400] : [2048, 4096];
  }

  buttons.forEach(function (button, i) {
    button.addEventListener("click", function () { selectSeries(i); frame.focus(); });
  });
  slider.addEventListener("input", function () { state.index = Number(slider.value) - 1; show(); });
  preset.addEventListener("change", function () {
    if (!preset.value) { state.center = null; state.width = null; show(); return; }
    var parts = preset.value.split(",");
    setWindow(Number(parts[0]), Number(parts[1]));
  });
  document.getElementById("apply").addEventListener("click", function () {
    setWindow(Number(wc.value), Number(ww.value));
  });
  [wc, ww].forEach(function (input) {
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); setWindow(Number(wc.value), Number(ww.value)); }
    });
  });
  frame.addEventListener("wheel", function (event) {
    event.preventDefault();
    scroll(event.deltaY > 0 ? 1 : -1);
  }, { passive: false });

  var drag = null;
  frame.addEventListener("pointerdown", function (event) {
    var start = baseWindow();
    drag = { x: event.clientX, y: event.clientY, center: start[0], width: start[1] };
    frame.setPointerCapture(event.pointerId);
  });
  frame.addEventListener("pointermove", function (event) {
    if (!drag) return;
    var scale = Math.max(1, drag.width / 200);
    state.center = drag.center + (event.clientY - drag.y) * scale;
    state.width = Math.max(1, drag.width + (event.clientX - drag.x) * scale);
    wc.value = String(Math.round(state.center));
    ww.value = String(Math.round(state.width));
  });
  function endDrag() { if (drag) { drag = null; show(); } }
  frame.addEventListener("pointerup", endDrag);
  frame.addEventListener("pointercancel", endDrag);

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT")) return;
    var w = baseWindow();
    var step = Math.max(1, Math.round(w[1] / 10));
    switch (event.key) {
      case "ArrowDown": case "ArrowRight": scroll(1); break;
      case "ArrowUp": case "ArrowLeft": scroll(-1); break;
      case "Home": state.index = 0; show(); break;
      case "End": state.index = instances().length - 1; show(); break;
      case "PageDown": selectSeries(state.series + 1); break;
      case "PageUp": selectSeries(state.series - 1); break;
      case "w": case "W": setWindow(w[0], w[1] + step); break;
      case "s": case "S": setWindow(w[0], w[1] - step); break;
      case "a": case "A": setWindow(w[0] - step, w[1]); break;
      case "d": case "D": setWindow(w[0] + step, w[1]); break;
      case "r": case "R": selectSeries(state.series); break;
      default: return;
    }
    event.preventDefault();
  });

  selectSeries(0);
})();
