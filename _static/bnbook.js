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
