//! The `#[fabric::task]` attribute of the fabric guest SDK.
//!
//! `#[task] fn add(a: i64, b: i64) -> i64 { a + b }` becomes:
//! - a unit struct `add` whose methods are the task's handles:
//!   `add.remote(1, 2)` (submit, returns an `ObjectRef<i64>`),
//!   `add.remote_with(&opts, 1, 2)` and `add.local(1, 2)` (call in-process);
//! - an argument struct that decodes both JSON (an object keyed by parameter
//!   name, or an array in order) and the SDK's binary encoding;
//! - a registration in the SDK's dispatch table under the name `add`.
//!
//! A unit struct is used rather than keeping `fn add` so that the handle reads
//! as in Ray (`add.remote(..)`): a function item cannot carry methods.
#![warn(missing_docs)]

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{parse_macro_input, spanned::Spanned, FnArg, ItemFn, Pat, ReturnType, Type};

/// Makes a function a fabric task. See the crate documentation.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[fabric::task] takes no arguments; per-call options go to `remote_with`",
        )
        .to_compile_error()
        .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(func) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.span(),
            "a fabric task must be a plain, non-async, non-generic function",
        ));
    }
    let vis = &func.vis;
    let attrs = &func.attrs;
    let name = &sig.ident;
    let name_str = name.to_string();
    let body = &func.block;

    let mut params = Vec::new();
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(r.span(), "a fabric task cannot take self"))
            }
            FnArg::Typed(pat) => {
                let Pat::Ident(ident) = &*pat.pat else {
                    return Err(syn::Error::new(
                        pat.pat.span(),
                        "task parameters must be plain names",
                    ));
                };
                if let Type::Reference(r) = &*pat.ty {
                    return Err(syn::Error::new(
                        r.span(),
                        "task parameters must be owned values (they cross a sandbox)",
                    ));
                }
                params.push(ident.ident.clone());
                types.push((*pat.ty).clone());
            }
        }
    }

    let (output_ty, returns_result) = match &sig.output {
        ReturnType::Default => (quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (quote!(#ok), true),
            None => (quote!(#ty), false),
        },
    };
    let ret = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };

    let args_struct = format_ident!("__FabricArgs_{}", name);
    let dispatch_fn = format_ident!("__fabric_dispatch_{}", name);
    let into_result = if returns_result {
        quote!(__out.map_err(::fabric::__private::to_error)?)
    } else {
        quote!(__out)
    };

    Ok(quote! {
        #(#attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #name;

        #[allow(non_camel_case_types)]
        #[derive(::fabric::__private::serde::Serialize, ::fabric::__private::serde::Deserialize)]
        #[serde(crate = "::fabric::__private::serde", deny_unknown_fields)]
        struct #args_struct { #(#params: #types,)* }

        #[allow(dead_code)]
        impl #name {
            /// The name this task is dispatched by.
            pub const NAME: &'static str = #name_str;

            /// Runs the task here, in this instance, as a plain call.
            #[allow(clippy::too_many_arguments, unused_mut)]
            pub fn local(&self, #(mut #params: #types),*) -> #ret #body

            /// Submits the task to the fabric; returns a reference to its result at once.
            #[allow(clippy::too_many_arguments)]
            pub fn remote(&self, #(#params: #types),*) -> ::fabric::Result<::fabric::ObjectRef<#output_ty>> {
                self.remote_with(&::fabric::TaskOptions::default(), #(#params),*)
            }

            /// Submits the task with explicit options.
            #[allow(clippy::too_many_arguments)]
            pub fn remote_with(&self, options: &::fabric::TaskOptions, #(#params: #types),*) -> ::fabric::Result<::fabric::ObjectRef<#output_ty>> {
                ::fabric::__private::submit(#name_str, &#args_struct { #(#params,)* }, options)
            }
        }

        #[allow(non_snake_case)]
        fn #dispatch_fn(
            __args: &[u8],
            __encoding: ::fabric::__private::Encoding,
        ) -> ::fabric::Result<::std::vec::Vec<u8>> {
            let #args_struct { #(#params,)* } = ::fabric::__private::decode_args(#name_str, __args, __encoding)?;
            let __out = #name.local(#(#params),*);
            let __value: #output_ty = #into_result;
            ::fabric::__private::encode_result(&__value, __encoding)
        }

        ::fabric::__private::inventory::submit! {
            ::fabric::__private::TaskEntry { name: #name_str, dispatch: #dispatch_fn }
        }
    })
}

/// `Result<T, ..>` (any path ending in `Result`) gives `Some(T)`.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}
