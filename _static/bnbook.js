/* bnbook: small page behaviours, offline, on every page (Jupyter Book loads every .js file
   under _static/).

   1. Tooltips by level. A "Tooltips" button in the bar above the article switches between
      Beginner (a tooltip on every glossary term) and Expert (tooltips on the terms the glossary
      marks advanced only). The choice is kept in localStorage, so it holds on every page.
   2. Explorer sliders read out their values ("250 steps", not the step number) even in pages
      whose stored explorer predates aria-valuetext, and the "run this cell" hint (for
      notebooks, whose stored scripts do not run) is removed.
   4. The first item of the left sidebar (the book's title) sits outside every landmark, so a
      screen reader's landmark list skips it (axe's "region" rule): it becomes a labelled region.
   5. Formulas are not Tab stops (MathJax's inTabOrder: false), except a display formula too wide
      for the column: it scrolls sideways, and a keyboard user must be able to reach it to scroll.
   3. The whole book as a PDF, when `make pdf` has made one: a link in the download menu and
      in the introduction (window.BNBOOK_PDF, from _static/bnbook-pdf.js).
   6. Paper (a browser's Print, and tools/make_pdf.py, which calls window.bnbookPreparePrint):
      each explorer gets a strip of the frames its data-print-frames names (older stored
      explorers: the rule of bnbook.widgets._explorer.default_print_frames), each with its
      slider values; each quiz gets a key of its answers after its last question; the quiz's
      number box asks for a written answer; and a block too tall to keep on one page (a long
      code cell, the quiz) is marked "bn-print-long", so that it may break across pages rather
      than leave most of a page blank (and a code cell of more than a few lines "bn-print-alone":
      its output may go overleaf). All of it is hidden on screen (_static/bnbook.css).
*/
(function () {
  "use strict";
  var KEY = "bnbook-tooltip-level";
  var LEVELS = { beginner: "Beginner", expert: "Expert" };

  function level() {
    try {
      var v = window.localStorage.getItem(KEY);
      return v === "expert" ? "expert" : "beginner";
    } catch (e) {
      return "beginner";
    }
  }

  function applyLevel() {
    var lv = level();
    document.documentElement.setAttribute("data-bn-level", lv);
    document.querySelectorAll("a.bn-level-basic, a.bn-level-advanced").forEach(function (a) {
      var on = lv === "beginner" || a.classList.contains("bn-level-advanced");
      if (a._tippy) {
        if (on) a._tippy.enable();
        else { a._tippy.hide(); a._tippy.disable(); }
      }
      a.setAttribute("data-bn-tooltip", on ? "on" : "off");
    });
    document.querySelectorAll(".bn-level-switch").forEach(function (b) {
      b.setAttribute("aria-pressed", lv === "expert" ? "true" : "false");
      b.querySelector(".bn-level-name").textContent = LEVELS[lv];
      b.title = lv === "expert"
        ? "Tooltips on advanced terms only. Press for tooltips on every glossary term."
        : "Tooltips on every glossary term. Press for tooltips on advanced terms only.";
    });
  }

  function addSwitch() {
    if (document.querySelector(".bn-level-switch")) return;
    var bar = document.querySelector(".article-header-buttons");
    if (!bar) return;
    var b = document.createElement("button");
    b.type = "button";
    b.className = "btn btn-sm bn-level-switch";
    // aria-pressed: "Expert" on or off; the visible text says which level is in force
    b.innerHTML = '<i class="fa-solid fa-graduation-cap" aria-hidden="true"></i>' +
      '<span class="bn-level-text"> Tooltips: <span class="bn-level-name"></span></span>';
    b.setAttribute("aria-label", "Expert tooltips (advanced terms only)");
    b.addEventListener("click", function () {
      try {
        window.localStorage.setItem(KEY, level() === "expert" ? "beginner" : "expert");
      } catch (e) { /* storage off: the switch still works on this page */ }
      applyLevel();
    });
    bar.insertBefore(b, bar.firstChild);
  }

  function sliders() {
    document.querySelectorAll(".bnbook-explorer").forEach(function (root) {
      var hint = root.querySelector(".bnx-hint");
      if (hint) hint.remove();
      root.querySelectorAll(".bnx-row").forEach(function (row) {
        var s = row.querySelector(".bnx-slider"), out = row.querySelector(".bnx-value");
        if (!s || !out || s.hasAttribute("aria-valuetext")) return;
        var sync = function () { s.setAttribute("aria-valuetext", out.textContent); };
        sync();
        s.addEventListener("input", function () { window.setTimeout(sync, 0); });
      });
    });
  }

  function pdfLink() {
    var file = window.BNBOOK_PDF;
    if (!file) return;
    var root = document.documentElement.getAttribute("data-content_root") || "./";
    var href = root + "_static/" + file;
    var menu = document.querySelector(".dropdown-download-buttons ul");
    if (menu && !menu.querySelector(".bn-pdf-book")) {
      var li = document.createElement("li");
      li.innerHTML = '<a href="" class="btn btn-sm dropdown-item bn-pdf-book" download>' +
        '<span class="btn__icon-container"><i class="fas fa-book"></i></span>' +
        '<span class="btn__text-container">Whole book (PDF)</span></a>';
      li.querySelector("a").setAttribute("href", href);
      menu.appendChild(li);
    }
    var note = document.getElementById("bnbook-pdf");
    if (note) {
      note.innerHTML = 'The whole book is also one <a href="">PDF</a>, for print or reading offline.';
      note.querySelector("a").setAttribute("href", href);
      note.hidden = false;
    }
  }

  function landmarks() {
    var n = 0;
    document.querySelectorAll(".sidebar-primary-items__start > .sidebar-primary-item").forEach(function (el) {
      if (el.closest("nav, header, main, aside, footer, [role]") || el.querySelector("nav, [role=navigation]")) return;
      el.setAttribute("role", "region");
      n += 1;  // landmarks need distinct names
      el.setAttribute("aria-label", n === 1 ? "Book title" : "Book title " + n);
    });
  }

  function wideFormulas() {
    document.querySelectorAll('div.math mjx-container, mjx-container[display="true"]').forEach(function (m) {
      var wide = m.scrollWidth > m.clientWidth + 1;
      if (wide && m.getAttribute("tabindex") !== "0") {
        m.setAttribute("tabindex", "0");
        m.setAttribute("data-bn-scroll", "");
      } else if (!wide && m.hasAttribute("data-bn-scroll")) {
        m.setAttribute("tabindex", "-1");
        m.removeAttribute("data-bn-scroll");
      }
    });
  }
  var pending = null;
  function soon() {
    if (pending) return;
    pending = window.setTimeout(function () { pending = null; wideFormulas(); }, 150);
  }

  // --- 6. Paper ---------------------------------------------------------------------------
  // Frames to print, as grid indices: the explorer's own list, or the default rule.
  function printFrames(root, shape, start) {
    try {
      var named = JSON.parse(root.getAttribute("data-print-frames") || "null");
      if (Array.isArray(named) && named.length) return named;
    } catch (e) { /* a broken list: the default */ }
    var n = shape[0], picks = [], i, k;
    if (n <= 6) {
      for (i = 0; i < n; i++) picks.push(i);
    } else {
      k = [5, 4, 6].filter(function (c) { return (n - 1) % (c - 1) === 0; })[0] || 5;
      for (i = 0; i < k; i++) {
        var p = Math.floor(i * (n - 1) / (k - 1) + 0.5);
        if (picks.indexOf(p) < 0) picks.push(p);
      }
    }
    return picks.map(function (p) { return [p].concat(start.slice(1)); });
  }

  function explorerStrip(root) {
    if (root.querySelector(".bnx-print")) return;
    var sliders = Array.prototype.slice.call(root.querySelectorAll(".bnx-slider"));
    var outs = root.querySelectorAll(".bnx-value"), names = root.querySelectorAll(".bnx-name");
    var img = root.querySelector("img.bnx-frame");
    if (!sliders.length || !img || outs.length !== sliders.length) return;
    var start = sliders.map(function (s) { return +s.value; });
    var shape = sliders.map(function (s) { return +s.max + 1; });
    var picks = printFrames(root, shape, start).filter(function (idx) {
      return idx.length === shape.length && idx.every(function (v, d) { return v >= 0 && v < shape[d]; });
    });
    if (!picks.length) return;
    var label = function (d) { return names[d] ? names[d].textContent.trim() : "value " + (d + 1); };
    var value = function (d) {
      // the spoken value carries the unit ("250 steps"); an older stored explorer updates it late
      var shown = outs[d].textContent.trim(), spoken = sliders[d].getAttribute("aria-valuetext") || "";
      return spoken.indexOf(shown) === 0 ? spoken : shown;
    };
    var show = function (idx) {
      sliders.forEach(function (s, d) { s.value = String(idx[d]); });
      sliders[0].dispatchEvent(new Event("input", { bubbles: true }));
    };
    var varies = shape.map(function (_, d) {
      return picks.some(function (idx) { return idx[d] !== picks[0][d]; });
    });
    if (!varies.some(Boolean)) varies = varies.map(function () { return true; });
    var strip = document.createElement("div");
    strip.className = "bnx-print";
    var figures = picks.map(function (idx) {
      show(idx);
      var fig = document.createElement("figure");
      fig.className = "bnx-print-frame";
      var cap = document.createElement("figcaption");
      shape.forEach(function (_, d) {
        if (!varies[d]) return;
        var line = document.createElement("span");
        line.textContent = label(d) + " = " + value(d);
        cap.appendChild(line);
      });
      var pic = document.createElement("img");
      pic.src = img.src;
      pic.alt = img.alt;
      fig.append(cap, pic);
      return fig;
    });
    var fixed = [];
    show(picks[0]);
    shape.forEach(function (_, d) { if (!varies[d]) fixed.push(label(d) + " = " + value(d)); });
    var total = shape.reduce(function (a, b) { return a * b; }, 1);
    var note = document.createElement("p");
    note.className = "bnx-print-note";
    note.textContent = (picks.length === total ? "All " + total : picks.length + " of the " + total) +
      " pictures of this explorer" + (fixed.length ? ", with " + fixed.join(" and ") : "") +
      ". In the HTML edition of the book " + (sliders.length === 1 ? "a slider steps" : "sliders step") +
      " through " + (picks.length === total ? "them." : "all of them.");
    // the note and the first frame share a page: a note at a page's foot would say nothing
    var head = document.createElement("div");
    head.className = "bnx-print-head";
    head.append(note, figures[0]);
    strip.appendChild(head);
    figures.slice(1).forEach(function (f) { strip.appendChild(f); });
    show(start);
    root.appendChild(strip);
  }

  // The quiz on paper: a key of its answers after the questions (copies: the screen's stay).
  function quizKey(quiz) {
    var next = quiz.nextElementSibling;
    if (next && next.classList.contains("bnq-print-key")) return;
    var key = document.createElement("section");
    key.className = "bnq-print-key";
    key.setAttribute("aria-label", "Answers to the quiz");
    key.innerHTML = '<p class="bnq-print-key-title"><strong>Answers to the quiz</strong></p>';
    var n = 0;
    quiz.querySelectorAll("fieldset.bnq-question").forEach(function (q, i) {
      var details = q.querySelector("details.bnq-explain");
      if (!details) return;
      var item = document.createElement("div");
      item.className = "bnq-print-answer";
      var head = document.createElement("p");
      head.innerHTML = "<strong></strong>";
      head.firstChild.textContent = "Question " + (i + 1) + ".";
      item.appendChild(head);
      details.querySelectorAll(":scope > p").forEach(function (p) { item.appendChild(p.cloneNode(true)); });
      key.appendChild(item);
      n += 1;
    });
    quiz.querySelectorAll('.bnq-question[data-kind="numeric"] .bnq-hint').forEach(function (hint) {
      if (hint.querySelector(".bn-print-only")) return;
      var screen = document.createElement("span");
      screen.className = "bn-screen-only";
      while (hint.firstChild) screen.appendChild(hint.firstChild);
      var paper = document.createElement("span");
      paper.className = "bn-print-only";
      paper.textContent = "Write a number in the box.";
      hint.append(screen, paper);
    });
    if (n) quiz.after(key);
  }

  // Blocks taller than a share of the page may break across pages; shorter ones stay whole.
  var TALL = "div.cell_input, div.cell_output, .bnbook-explorer, .bnbook-quiz, .bnq-print-key, " +
    "div.highlight, div.highlight pre, .cell_output .output, .cell_output pre, div.math, table";
  var pagePx = 1100;  // a page's height in CSS pixels, about A4 at a browser's default margins
  function markTall(pageHeight) {
    if (pageHeight) pagePx = pageHeight;  // tools/make_pdf.py knows it exactly; keep it for later calls
    var n = 0;
    var height = function (el) { return Math.max(el.scrollHeight, el.getBoundingClientRect().height); };
    document.querySelectorAll(TALL).forEach(function (el) {
      var tall = height(el) > 0.45 * pagePx;
      el.classList.toggle("bn-print-long", tall);
      n += tall ? 1 : 0;
    });
    // a short code cell stays with its output; a longer one may end a page, its output overleaf
    document.querySelectorAll("div.cell_input").forEach(function (el) {
      el.classList.toggle("bn-print-alone", height(el) > 0.2 * pagePx);
    });
    return n;
  }

  // Everything above; safe to call again (the strips and keys are made once, the marks anew).
  function preparePrint(options) {
    var done = { frames: 0, explorers: 0, answers: 0, tall: 0 };
    document.querySelectorAll(".bnbook-explorer").forEach(function (root) {
      explorerStrip(root);
      done.frames += root.querySelectorAll(".bnx-print-frame").length;
      done.explorers += root.querySelector(".bnx-print") ? 1 : 0;
    });
    document.querySelectorAll(".bnbook-quiz").forEach(function (quiz) {
      quizKey(quiz);
      var key = quiz.nextElementSibling;
      if (key && key.classList.contains("bnq-print-key")) {
        done.answers += key.querySelectorAll(".bnq-print-answer").length;
      }
    });
    done.tall = markTall(options && options.pageHeight);
    return done;
  }
  window.bnbookPreparePrint = preparePrint;
  window.addEventListener("beforeprint", function () { preparePrint(); });

  document.addEventListener("DOMContentLoaded", function () {
    // MathJax typesets formulas as they scroll into view: check each new one
    new MutationObserver(soon).observe(document.body, { childList: true, subtree: true });
    window.addEventListener("resize", soon);
    landmarks();
    addSwitch();
    applyLevel();
    sliders();
    pdfLink();
  });
  // sphinx-tippy makes its tooltips in window.onload; apply the level once they exist
  window.addEventListener("load", function () { window.setTimeout(applyLevel, 0); });
})();
